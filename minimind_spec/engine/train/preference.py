"""The DPO stage runner: preference pairs in, `builders.dpo_loss` out, through the common loop.

A row is one pair: samples 2i (chosen) and 2i + 1 (rejected) of a preference token cache, whose
trained mask covers the response tokens only. A batch stacks each pair's two sequences (chosen,
rejected, chosen, ...) padded to the longest in the batch, not to `seq_len`. A sequence's
log-prob is the sum over its response tokens (the per-token mean for IPO).

The reference is the stage's input model, frozen, in one of three forms:
- "adapters": the policy itself with its LoRA adapters disabled (LoRA stages whose input model
  has untrained adapters, B = 0, so that disabling them gives the input model: no second copy);
- "copy": a frozen copy of the input model (full fine-tuning);
- "precomputed": every pair's reference log-probs computed once before training
  (`--precompute-ref`, and LoRA stages whose input adapters were trained by an earlier stage,
  where disabling them would not give the input model), so only the policy is in memory.
Each step logs trl's names (`rewards/chosen`, `rewards/rejected`, `rewards/margins`,
`rewards/accuracies`, `logps/chosen`, `logps/rejected`), and `DPOWatch` warns about divergence,
collapsing likelihoods or a policy that does not move.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from builders import adapters_disabled
from builders.techniques import IGNORE_INDEX, dpo_loss, sequence_log_probs

from ...errors import InputError
from ..data.token_cache import TokenCache
from .monitors import DPOWatch, ExpertLoadWatch, moe_metrics
from .stages import held_out_split

ReferenceMode = Literal["adapters", "copy", "precomputed"]


@dataclass(frozen=True)
class PairBatch:
    input_ids: torch.Tensor  # (2B, T) chosen, rejected, chosen, ... padded to the longest
    labels: torch.Tensor  # (2B, T) IGNORE_INDEX outside the responses
    samples: torch.Tensor  # (2B,) int64 cache sample indices (for precomputed reference log-probs)
    real_tokens: int

    @property
    def eval_weight(self) -> float:
        return self.input_ids.shape[0] / 2  # pairs


@dataclass
class PreferenceRunner:
    kind: str
    cache: TokenCache
    pad_id: int
    beta: float
    loss_type: str
    reference_mode: ReferenceMode
    eval_fraction: float = 0.05
    max_eval_rows: int = 64
    reference: nn.Module | None = None  # the frozen copy ("copy")
    reference_logps: np.ndarray | None = None  # per sample ("precomputed")
    load_watch: ExpertLoadWatch | None = None
    dpo_watch: DPOWatch = field(default_factory=DPOWatch)

    def __post_init__(self) -> None:
        pairs = len(self.cache) // 2
        if pairs == 0:
            raise InputError(f"{self.cache.meta.source}: no usable preference pair")
        self.train_rows, self.eval_rows = held_out_split(pairs, self.eval_fraction, self.max_eval_rows)

    def batch(self, indices: list[int], device: torch.device | str) -> PairBatch:
        samples = [s for pair in indices for s in (2 * pair, 2 * pair + 1)]
        sides = [self.cache.sample(s) for s in samples]
        longest = max(len(tokens) for tokens, _, _ in sides)
        ids = np.full((len(sides), longest), self.pad_id, dtype=np.int64)
        labels = np.full((len(sides), longest), IGNORE_INDEX, dtype=np.int64)
        for row, (tokens, trained, _) in enumerate(sides):
            tokens = np.asarray(tokens, dtype=np.int64)  # the cache holds uint16/uint32: no -100 there
            ids[row, :len(tokens)] = tokens
            labels[row, :len(tokens)] = np.where(np.asarray(trained, dtype=bool), tokens, IGNORE_INDEX)
        return PairBatch(torch.from_numpy(ids).to(device), torch.from_numpy(labels).to(device),
                         torch.tensor(samples, dtype=torch.int64), sum(len(t) for t, _, _ in sides))

    def _log_probs(self, model: nn.Module, batch: PairBatch) -> tuple[torch.Tensor, object]:
        out = model(batch.input_ids)  # logits (2B, T, V)
        return sequence_log_probs(out.logits, batch.labels, average=self.loss_type == "ipo"), out  # (2B,)

    @torch.no_grad()
    def _reference_log_probs(self, model: nn.Module, batch: PairBatch) -> torch.Tensor:
        if self.reference_mode == "precomputed":
            assert self.reference_logps is not None
            return torch.from_numpy(self.reference_logps[batch.samples.numpy()]).to(batch.input_ids.device)
        if self.reference_mode == "copy":
            assert self.reference is not None
            return self._log_probs(self.reference, batch)[0].float()
        was_training = model.training
        model.eval()  # no dropout in the reference, as in the other two forms
        try:
            with adapters_disabled(model):
                return self._log_probs(model, batch)[0].float()
        finally:
            model.train(was_training)

    def objective(self, model: nn.Module, batch: PairBatch) -> tuple[torch.Tensor, dict[str, float]]:
        reference = self._reference_log_probs(model, batch)  # (2B,)
        policy, out = self._log_probs(model, batch)  # (2B,)
        policy = policy.float()
        losses, chosen_rewards, rejected_rewards = dpo_loss(policy[0::2], policy[1::2], reference[0::2], reference[1::2],
                                                            self.beta, self.loss_type)  # type: ignore[arg-type]
        loss = losses.mean()
        metrics: dict[str, object] = {
            "dpo_loss": float(loss.detach()),
            "rewards/chosen": float(chosen_rewards.mean()), "rewards/rejected": float(rejected_rewards.mean()),
            "rewards/margins": float((chosen_rewards - rejected_rewards).mean()),
            "rewards/accuracies": float((chosen_rewards > rejected_rewards).float().mean()),
            "logps/chosen": float(policy[0::2].detach().mean()), "logps/rejected": float(policy[1::2].detach().mean()),
        }
        if out.expert_counts is not None:  # type: ignore[attr-defined]
            metrics |= moe_metrics(out.aux_loss, out.expert_counts)  # type: ignore[attr-defined]
            loss = loss + out.aux_loss  # type: ignore[attr-defined]
        return loss, metrics  # type: ignore[return-value]

    def watch(self, step: int, metrics: dict[str, object]) -> list[str]:
        warnings = self.dpo_watch.update(step, metrics)
        return warnings + (self.load_watch.update(step, metrics) if self.load_watch is not None else [])


def frozen_copy(model: nn.Module) -> nn.Module:
    """The reference for full fine-tuning: a copy of the input model, eval mode, no gradients."""
    reference = copy.deepcopy(model).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference


@torch.no_grad()
def precompute_reference(runner: PreferenceRunner, model: nn.Module, device: str, micro_batch: int,
                         autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """Every sample's reference log-prob under `model` as the stage receives it (its adapters, if
    any, included), in one pass before training."""
    pairs = np.concatenate([runner.train_rows, runner.eval_rows]).tolist()
    logps = np.zeros(len(runner.cache), dtype=np.float64)
    was_training = model.training
    model.eval()
    for start in range(0, len(pairs), micro_batch):
        batch = runner.batch(pairs[start:start + micro_batch], device)
        with torch.autocast(torch.device(device).type, dtype=autocast_dtype) if autocast_dtype else nullcontext():
            values = runner._log_probs(model, batch)[0]  # the precision the policy trains in
        logps[batch.samples.numpy()] = values.double().cpu().numpy()
    model.train(was_training)
    return logps


def has_trained_adapters(model: nn.Module) -> bool:
    """True when some LoRA adapter's B is non-zero: the adapters change the model's outputs."""
    return any(name.endswith(".lora.B") and bool(p.detach().any()) for name, p in model.named_parameters())
