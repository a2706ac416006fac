"""The distillation stage runner: SFT rows (packed conversations), a frozen teacher, and
`builders.distill_loss` through the common loop.

The teacher is another trained model (a run, stage, checkpoint or model directory), loaded in
eval mode without gradients (bf16 on CUDA). Teacher and student must share the tokenizer: the
plan refuses a vocabulary mismatch. Tokens inside `<think>...</think>` (tags included) weigh
`reasoning_weight` in both the label and the soft term (the card: 0.5); with
`reasoning_token_masking` off every trained token weighs 1. Each step logs the two parts
(`ce`, the label cross-entropy, and `soft`, the teacher divergence) and the mean weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from builders.techniques import causal_lm_loss, distill_loss

from .monitors import moe_metrics
from .stages import Batch, LanguageModelRunner


@dataclass
class DistillationRunner(LanguageModelRunner):
    teacher: nn.Module | None = None
    temperature: float = 2.0
    alpha: float = 0.5
    divergence: str = "KL"
    reasoning_weight: float | None = 0.5  # None: every token weighs 1

    def objective(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        assert self.teacher is not None
        with torch.no_grad():
            teacher_logits = self.teacher(batch.input_ids).logits  # (B, T, V)
        out = model(batch.input_ids)  # logits (B, T, V)
        weights = None
        if self.reasoning_weight is not None:
            weights = torch.where(batch.reasoning, self.reasoning_weight, 1.0)  # (B, T)
        loss, parts = distill_loss(out.logits, teacher_logits, batch.labels, self.temperature, self.alpha, weights,
                                   self.divergence)  # type: ignore[arg-type]
        with torch.no_grad():
            lm = causal_lm_loss(out.logits.detach(), batch.labels)  # unweighted: the held-out perplexity
        metrics: dict[str, object] = {"distill_loss": float(loss.detach()), "lm_loss": float(lm), "ce": float(parts["ce"]),
                                      "soft": float(parts["soft"]), "reasoning_share": float(batch.reasoning.float().mean())}
        if out.expert_counts is not None:
            metrics |= moe_metrics(out.aux_loss, out.expert_counts)
        return loss + out.aux_loss, metrics  # type: ignore[return-value]


def frozen_teacher(model: nn.Module, device: str) -> nn.Module:
    """Eval mode, no gradients, bf16 weights on CUDA (fp32 elsewhere)."""
    model = model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        model = model.to(torch.bfloat16)
    return model
