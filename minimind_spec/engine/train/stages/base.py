"""What a stage factory gets and what it returns: the contract between a stage kind and the loop.

A factory takes `StageInputs` (the stage's plan, its input model with the trainable roles set,
its token cache, the device and precision) and returns `StageParts`, built complete and never
changed afterwards:
- `data`: the training and held-out rows and how a list of rows becomes a batch;
- `objective`: pure, `count(batch)` (what the batch's loss sum is normalised by: labelled
  tokens, weighted tokens, pairs; known before the forward) and `(model, batch) ->
  ObjectiveOutput` (the loss *sum*, per-count metrics, MoE expert counts). The loop sums a
  step's micro-batches and processes and divides once by the step's total count;
- `watches`: checks on each step's metrics row that return warnings (DPO collapse, MoE load); a
  `StoppingWatch` can also end the stage (DPO's `stop_on_collapse`);
- `reference`: the form of the DPO reference the factory built (None for other stages).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from builders.model import MiniMindForCausalLM

from ....metrics import MetricsRow
from ....plan import ReferenceMode, StagePlan
from ...data.token_cache import TokenCache
from ...data.tokenizer import ChatTokenizer
from ..precision import PrecisionRuntime

EVAL_FRACTION = 0.05  # the last 5% of a stage's rows are held out ...
MAX_EVAL_ROWS = 64  # ... at most this many, and none from fewer than 20 rows


@dataclass(frozen=True)
class ObjectiveOutput:
    loss_sum: torch.Tensor  # () the batch's summed loss (its MoE balance loss weighted by the count), differentiable
    metrics: dict[str, float]  # means over the batch's count
    expert_counts: torch.Tensor | None = None  # (MoE layers, E) tokens routed to each expert


class Objective(Protocol):
    def count(self, batch: Any) -> float: ...  # what the batch's loss sum is normalised by

    def __call__(self, model: nn.Module, batch: Any) -> ObjectiveOutput: ...


class Watch(Protocol):
    def update(self, step: int, row: MetricsRow) -> list[str]: ...  # warnings about this step, if any


@runtime_checkable
class StoppingWatch(Watch, Protocol):
    """A watch that can end its stage: `stop_reason` is set once it should (the loop then saves and ends the stage)."""

    stop_reason: str | None


@dataclass(frozen=True)
class StageData:
    train_rows: np.ndarray  # row indices trained on
    eval_rows: np.ndarray  # held-out row indices
    make_batch: Callable[[list[int], str], Any]  # (row indices, device) -> a batch
    summary: str  # what the rows are, for the run's log

    def batch(self, indices: list[int], device: str) -> Any:
        return self.make_batch(indices, device)


@dataclass(frozen=True)
class StageInputs:
    plan: StagePlan
    model: MiniMindForCausalLM  # the stage's input model: weights loaded, trainable roles set
    cache: TokenCache
    pad_id: int
    device: str
    precision: PrecisionRuntime
    moe: bool  # the model routes tokens to experts
    tokenizer: ChatTokenizer | None = None  # the run's tokenizer (a stage that samples text decodes with it: GRPO)


@dataclass(frozen=True)
class StageParts:
    data: StageData
    objective: Objective
    watches: tuple[Watch, ...] = ()
    reference: ReferenceMode | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)  # lines for the run's log (what was built)


StageFactory = Callable[[StageInputs], StageParts]


def held_out_split(rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): the last EVAL_FRACTION of the rows (at most MAX_EVAL_ROWS, none under 20 rows)."""
    held_out = min(MAX_EVAL_ROWS, int(rows * EVAL_FRACTION)) if rows >= 20 else 0
    return np.arange(rows - held_out), np.arange(rows - held_out, rows)


def balance_loss_metric(aux_loss: torch.Tensor, expert_counts: torch.Tensor | None) -> dict[str, float]:
    """The batch's MoE balance loss (its per-count share is added to the loss sum by the objective)."""
    return {} if expert_counts is None else {"aux_loss": float(aux_loss.detach())}
