"""DPO: preference pairs in, `builders.dpo_loss` out, against the reference the plan chose.

A row is one pair: samples 2i (chosen) and 2i + 1 (rejected) of a preference token cache,
whose trained mask covers the response tokens only; a batch pads them to its longest. A
sequence's log-prob is the sum over its response tokens (the per-token mean for IPO and with
`length_normalized`). With `rpo_alpha`, each pair adds alpha x the chosen response's per-token
NLL (RPO). trl's 'sft' term takes the mean over all chosen tokens of a batch; here it is each
pair's own mean, so the loss does not depend on how a step is split into micro-batches (the two
agree when the chosen responses have equal lengths). The loss sum is summed over pairs and its
count is the pairs.

The reference is the stage's input model, frozen, in the form the plan decided:
- copy: a frozen copy of the input model (full fine-tuning);
- adapters off: the policy itself with its LoRA adapters disabled (their B = 0 when the stage
  starts, so that gives the input model; no second copy);
- precomputed: every pair's reference log-probs computed once, before training, in the policy's
  precision (`--precompute-ref`, and whenever the input model's adapters may be trained).
Each batch reports trl's names (`rewards/chosen`, `rewards/rejected`, `rewards/margins`,
`rewards/accuracies`, `logps/chosen`, `logps/rejected`); `DPOWatch` warns about divergence,
collapsing likelihoods or a policy that does not move.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from builders import adapters_disabled
from builders.model import CausalLMOutput
from builders.techniques import dpo_loss, sequence_log_probs
from builders.techniques.causal_lm import IGNORE_INDEX, shift_labels

from ....errors import InputError
from ....objectives import PreferenceObjective
from ....plan import ReferenceMode
from ..monitors import DPOWatch, ExpertLoadWatch
from .base import ObjectiveOutput, StageData, StageInputs, StageParts, held_out_split, balance_loss_metric
from .batches import PairBatch, collate_pairs


def sequence_logps(model: nn.Module, batch: PairBatch, average: bool) -> tuple[torch.Tensor, CausalLMOutput]:
    out = model(batch.input_ids)  # logits (2B, T, V)
    return sequence_log_probs(out.logits, batch.labels, average=average).float(), out  # (2B,)


def response_tokens(batch: PairBatch) -> torch.Tensor:
    """(2B,) the number of response tokens of each sequence (the positions its log-prob sums over)."""
    return (shift_labels(batch.labels) != IGNORE_INDEX).sum(dim=-1).clamp(min=1)


class Reference(Protocol):
    @property
    def mode(self) -> ReferenceMode: ...

    def log_probs(self, policy: nn.Module, batch: PairBatch, average: bool) -> torch.Tensor: ...  # (2B,) no gradient


@dataclass(frozen=True)
class FrozenCopy:
    model: nn.Module
    mode: ReferenceMode = ReferenceMode.COPY

    @torch.no_grad()
    def log_probs(self, policy: nn.Module, batch: PairBatch, average: bool) -> torch.Tensor:
        return sequence_logps(self.model, batch, average)[0]


@dataclass(frozen=True)
class AdaptersOff:
    mode: ReferenceMode = ReferenceMode.ADAPTERS_OFF

    @torch.no_grad()
    def log_probs(self, policy: nn.Module, batch: PairBatch, average: bool) -> torch.Tensor:
        was_training = policy.training
        policy.eval()  # no dropout in the reference, as in the other two forms
        try:
            with adapters_disabled(policy):
                return sequence_logps(policy, batch, average)[0]
        finally:
            policy.train(was_training)


@dataclass(frozen=True)
class Precomputed:
    logps: np.ndarray  # (samples,) float64, by cache sample index
    mode: ReferenceMode = ReferenceMode.PRECOMPUTED

    def log_probs(self, policy: nn.Module, batch: PairBatch, average: bool) -> torch.Tensor:
        return torch.from_numpy(self.logps[batch.samples]).float().to(batch.input_ids.device)


@dataclass(frozen=True)
class DPOLoss:
    settings: PreferenceObjective
    reference: Reference

    def count(self, batch: PairBatch) -> float:
        return float(batch.pairs)

    def __call__(self, model: nn.Module, batch: PairBatch) -> ObjectiveOutput:
        settings = self.settings
        reference = self.reference.log_probs(model, batch, settings.averaged)  # (2B,)
        summed, out = sequence_logps(model, batch, average=False)  # (2B,)
        tokens = response_tokens(batch).to(summed.dtype)  # (2B,)
        means = summed / tokens  # (2B,) per-token mean log-probs
        policy = means if settings.averaged else summed  # (2B,)
        losses, chosen, rejected = dpo_loss(policy[0::2], policy[1::2], reference[0::2], reference[1::2],
                                            settings.beta, settings.loss)
        nll = -means[0::2]  # (B,) the chosen responses' per-token NLL
        total = losses + settings.rpo_alpha * nll if settings.rpo_alpha else losses  # (B,)
        metrics = {"dpo_loss": float(losses.detach().mean()), "rewards/chosen": float(chosen.mean()),
                   "rewards/rejected": float(rejected.mean()), "rewards/margins": float((chosen - rejected).mean()),
                   "rewards/accuracies": float((chosen > rejected).float().mean()),
                   "logps/chosen": float(summed[0::2].detach().mean()), "logps/rejected": float(summed[1::2].detach().mean()),
                   **({"nll_chosen": float(nll.detach().mean())} if settings.rpo_alpha else {}),
                   **balance_loss_metric(out.aux_loss, out.expert_counts)}
        aux = out.aux_loss * batch.pairs
        return ObjectiveOutput(total.sum() + aux, metrics, out.expert_counts)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of the input model in eval mode without gradients."""
    reference = copy.deepcopy(model).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference


@torch.no_grad()
def precompute(inputs: StageInputs, data: StageData, average: bool) -> Precomputed:
    """Every pair's reference log-probs under the input model as the stage receives it (adapters
    included), in the policy's precision, in one pass before training."""
    model = inputs.model
    pairs = np.concatenate([data.train_rows, data.eval_rows]).tolist()
    logps = np.zeros(len(inputs.cache), dtype=np.float64)
    was_training = model.training
    model.eval()
    for start in range(0, len(pairs), inputs.plan.micro_batch):
        batch = data.batch(pairs[start:start + inputs.plan.micro_batch], inputs.device)
        with inputs.precision.autocast():
            logps[batch.samples] = sequence_logps(model, batch, average)[0].double().cpu().numpy()
    model.train(was_training)
    return Precomputed(logps)


def preference_stage(inputs: StageInputs) -> StageParts:
    settings = inputs.plan.objective
    assert isinstance(settings, PreferenceObjective)
    cache = inputs.cache
    pairs = len(cache) // 2
    if pairs == 0:
        raise InputError(f"{cache.meta.source}: no usable preference pair")
    train, held_out = held_out_split(pairs)
    data = StageData(train, held_out, lambda indices, device: collate_pairs(cache, indices, inputs.pad_id, device),
                     f"{pairs:,} preference pairs; {len(held_out)} held out")
    mode = inputs.plan.reference
    reference: Reference
    if mode == ReferenceMode.COPY:
        reference = FrozenCopy(frozen_copy(inputs.model))
    elif mode == ReferenceMode.ADAPTERS_OFF:
        reference = AdaptersOff()
    elif mode == ReferenceMode.PRECOMPUTED:
        reference = precompute(inputs, data, settings.averaged)
    else:
        raise ValueError(f"a DPO stage needs a reference form; the plan gave {mode!r}")
    watches = (DPOWatch(stop_on_collapse=settings.stop_on_collapse), *((ExpertLoadWatch(),) if inputs.moe else ()))
    return StageParts(data, DPOLoss(settings, reference), watches, reference=reference.mode)
