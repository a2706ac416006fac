"""Stage runners: what differs between training stages, behind one small interface.

A runner gives the loop its rows (training and held-out) and its objective; the loop (same for
every stage) does precision, accumulation, clipping, schedule, evaluation, metrics and
checkpoints. Pretraining and SFT share the causal-LM objective and differ in their rows: the
pretraining token stream, or packed conversations whose labels cover the assistant spans.
A new technique (DPO, distillation) is a new runner with its own rows and objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from builders.techniques import causal_lm_loss

from ..data.packing import Row, RowLayout, sample_layout, sample_row, stream_layout, stream_row
from ..data.token_cache import TokenCache
from .monitors import ExpertLoadWatch, moe_metrics


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, -100 where not trained
    reasoning: torch.Tensor  # (B, T) bool
    real_tokens: int  # non-padding positions

    @property
    def eval_weight(self) -> float:
        """The batch's weight in a held-out mean: its trained (predicted) tokens."""
        return float((self.labels[:, 1:] != -100).sum())


def collate(rows: list[Row], device: torch.device | str) -> Batch:
    return Batch(
        input_ids=torch.from_numpy(np.stack([r.input_ids for r in rows])).to(device),
        labels=torch.from_numpy(np.stack([r.labels for r in rows])).to(device),
        reasoning=torch.from_numpy(np.stack([r.reasoning for r in rows])).to(device),
        real_tokens=sum(r.real_tokens for r in rows),
    )


class StageBatch(Protocol):
    real_tokens: int  # non-padding tokens (throughput counts these only)

    @property
    def eval_weight(self) -> float: ...  # the batch's weight in a held-out mean


class StageRunner(Protocol):
    """What the loop needs from a stage: its rows, how rows become a batch, the objective, and
    (optionally noisy) checks on each step's metrics."""

    kind: str

    @property
    def train_rows(self) -> np.ndarray: ...  # row indices trained on

    @property
    def eval_rows(self) -> np.ndarray: ...  # held-out row indices

    def batch(self, indices: list[int], device: torch.device | str) -> StageBatch: ...

    def objective(self, model: nn.Module, batch: StageBatch) -> tuple[torch.Tensor, dict[str, float]]: ...

    def watch(self, step: int, metrics: dict[str, float]) -> list[str]: ...  # warnings about this step, if any


def held_out_split(rows: int, fraction: float, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): the last `fraction` of the rows (at most `max_rows`, none under 20 rows)."""
    held_out = min(max_rows, int(rows * fraction)) if rows >= 20 else 0
    return np.arange(rows - held_out), np.arange(rows - held_out, rows)


class RowRunner:
    """Shared by runners whose batch is a stack of `Row`s (`row(i)`), with nothing to watch but MoE load."""

    load_watch: ExpertLoadWatch | None = None  # set for MoE models

    def row(self, index: int) -> Row:
        raise NotImplementedError

    def batch(self, indices: list[int], device: torch.device | str) -> Batch:
        return collate([self.row(i) for i in indices], device)

    def watch(self, step: int, metrics: dict[str, float]) -> list[str]:
        return self.load_watch.update(step, metrics) if self.load_watch is not None else []


@dataclass
class LanguageModelRunner(RowRunner):
    """Pretraining (token stream) and SFT (packed conversations): next-token cross-entropy on the
    labelled positions, plus the MoE balance loss when the model has one."""

    kind: str
    cache: TokenCache
    layout: RowLayout
    pad_id: int
    label_smoothing: float
    eval_fraction: float = 0.05
    max_eval_rows: int = 64

    def __post_init__(self) -> None:
        self.train_rows, self.eval_rows = held_out_split(self.layout.rows, self.eval_fraction, self.max_eval_rows)

    def row(self, index: int) -> Row:
        if self.layout.stream_rows:
            return stream_row(self.cache, self.layout, index)
        return sample_row(self.cache, self.layout, index, self.pad_id)

    def objective(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(batch.input_ids)
        lm = causal_lm_loss(out.logits, batch.labels, label_smoothing=self.label_smoothing)
        metrics: dict[str, object] = {"lm_loss": float(lm.detach())}
        if out.expert_counts is not None:
            metrics |= moe_metrics(out.aux_loss, out.expert_counts)
        return lm + out.aux_loss, metrics  # type: ignore[return-value]


def language_model_runner(kind: str, cache: TokenCache, seq_len: int, pad_id: int, label_smoothing: float,
                          packed: bool = True) -> LanguageModelRunner:
    layout = stream_layout(cache, seq_len) if kind == "pretrain" else sample_layout(cache, seq_len, packed)
    if layout.rows == 0:
        raise ValueError(f"the data holds {cache.meta.tokens} tokens: not one row of {seq_len}")
    return LanguageModelRunner(kind, cache, layout, pad_id, label_smoothing)
