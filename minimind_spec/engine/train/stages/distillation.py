"""Distillation: the SFT rows (packed conversations), a frozen teacher, and `builders.distill_loss_sum`.

The teacher is the trained model the plan names (a run, stage, checkpoint or model directory),
loaded in eval mode without gradients (bf16 weights on CUDA); teacher and student must share
the tokenizer and the teacher must take the stage's row length. It sees the same packed rows as
the student, each sample isolated. Tokens inside `<think>...</think>` (tags included) weigh the
objective's `reasoning_weight` in both the label and the soft term; the count a step divides by
is the sum of the weights. Each batch reports the two parts (`ce`, the label cross-entropy;
`soft`, the teacher divergence), the unweighted label loss (`lm_loss`, the held-out perplexity)
and the share of reasoning tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from builders.techniques import causal_lm_loss_sum, distill_loss_sum, trained_weights

from ....errors import InputError
from ....model_files import find_model
from ....objectives import DistillObjective
from ...export import load_model, read_model_config
from ..monitors import ExpertLoadWatch
from .base import ObjectiveOutput, StageInputs, StageParts, balance_loss_metric
from .batches import TokenBatch
from .language_model import no_grad_logits, token_rows


def load_teacher(inputs: StageInputs) -> nn.Module:
    """The plan's teacher, checked against the student and frozen: eval mode, no gradients, bf16 on CUDA."""
    plan = inputs.plan
    if plan.teacher is None:
        raise InputError("distillation needs the teacher's trained model: --teacher RUN_DIR")
    files = find_model(plan.teacher)
    config = read_model_config(files.config).model
    vocab = inputs.model.vocab_size
    if config.vocab_size != vocab:
        raise InputError(f"the teacher's vocab is {config.vocab_size:,} but the student's is {vocab:,}: teacher and "
                         "student must share the tokenizer")
    if config.max_position_embeddings < plan.seq_len:
        raise InputError(f"the teacher takes at most {config.max_position_embeddings} positions; the stage's rows are "
                         f"{plan.seq_len} long (lower seq_len, or use a teacher with more positions)")
    teacher = load_model(files.config, files.weights, device=inputs.device).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    if torch.device(inputs.device).type == "cuda" and torch.cuda.is_bf16_supported():
        teacher = teacher.to(torch.bfloat16)
    return teacher


@dataclass(frozen=True)
class DistillationLoss:
    teacher: nn.Module
    settings: DistillObjective

    def weights(self, batch: TokenBatch) -> torch.Tensor | None:
        # (B, T) the weight of each token (aligned with the labels), None when every token weighs 1
        weight = self.settings.reasoning_weight
        return None if weight is None else torch.where(batch.reasoning, weight, 1.0)

    def count(self, batch: TokenBatch) -> float:
        return float(trained_weights(batch.labels, self.weights(batch)).sum())

    def __call__(self, model: nn.Module, batch: TokenBatch) -> ObjectiveOutput:
        teacher_logits = no_grad_logits(self.teacher, batch)  # (B, T, V)
        out = model(batch.input_ids, packed=batch.packed)  # logits (B, T, V)
        total, count, parts = distill_loss_sum(out.logits, teacher_logits, batch.labels, self.settings.temperature,
                                               self.settings.alpha, self.weights(batch), self.settings.divergence)
        with torch.no_grad():
            lm_sum, lm_count = causal_lm_loss_sum(out.logits.detach(), batch.labels)  # unweighted: the perplexity
        per = 1.0 / max(float(count), 1e-12)
        metrics = {"distill_loss": float(total.detach()) * per, "ce": float(parts["ce"]) * per, "soft": float(parts["soft"]) * per,
                   "lm_loss": float(lm_sum) / max(float(lm_count), 1.0), "reasoning_share": float(batch.reasoning.float().mean()),
                   **balance_loss_metric(out.aux_loss, out.expert_counts)}
        return ObjectiveOutput(total + out.aux_loss * count, metrics, out.expert_counts)


def distillation_stage(inputs: StageInputs) -> StageParts:
    settings = inputs.plan.objective
    assert isinstance(settings, DistillObjective)
    if settings.kind != "logit":
        raise InputError(f"{settings.kind} distillation is not supported; set techniques.distill.type to \"logit\"")
    watches = (ExpertLoadWatch(),) if inputs.moe else ()
    return StageParts(token_rows(inputs), DistillationLoss(load_teacher(inputs), settings), watches,
                      notes=(f"teacher: {inputs.plan.teacher}",))
