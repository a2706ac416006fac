"""Measure a stage's training throughput before committing to it (`train --plan --probe`).

The probe trains the stage's real model (its trainable roles, batch, micro-batch, `seq_len`,
precision and device) for a few optimizer steps through the same loop as a run, on random
token rows, in a scratch directory it removes. The first step (allocation, kernel selection)
is not counted; the rate is the median of the loop's own tokens/s over the steps after it.
The plan turns the rate into its wall-time estimate.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import networkx as nx
import numpy as np
import torch
from torch import nn

from ...config import ResolvedSpec
from ...graph import ParamRole
from ...plan import StagePlan
from ..compile import compile_graph
from ..data.packing import Row
from ..trainability import set_trainable
from .loop import METRICS_FILE, LoopConfig, run_stage
from .stages import Batch, LanguageModelRunner, RowRunner

PROBED_KINDS = ("pretrain", "sft")  # stages that need nothing but rows (DPO and distillation need data and a frozen model)


@dataclass
class RandomRows(RowRunner):
    """A stage runner over `count` rows of uniformly random token ids, every position trained."""

    kind: str
    count: int
    seq_len: int
    vocab_size: int
    label_smoothing: float = 0.0

    @property
    def train_rows(self) -> np.ndarray:
        return np.arange(self.count)

    @property
    def eval_rows(self) -> np.ndarray:
        return np.arange(0)

    def row(self, index: int) -> Row:
        ids = np.random.default_rng(index).integers(0, self.vocab_size, self.seq_len, dtype=np.int64)
        return Row(ids, ids.copy(), np.zeros(self.seq_len, dtype=bool), self.seq_len)

    def objective(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return LanguageModelRunner.objective(self, model, batch)  # type: ignore[arg-type]  # the same loss as a run


def probe_stage(resolved: ResolvedSpec, graph: nx.DiGraph, stage: StagePlan, device: str, steps: int = 3) -> float:
    """Tokens per second of `stage` on `device`: the median over `steps` optimizer steps after one warm-up step."""
    assert resolved.training is not None
    if stage.kind not in PROBED_KINDS:
        raise ValueError(f"the {stage.kind} stage is not probed: it needs its data and frozen model")
    model = compile_graph(graph, device=device, seed=0)
    set_trainable(model, graph, {ParamRole(role) for role in stage.trainable_roles})
    runner = RandomRows(stage.kind, stage.batch_size * (steps + 1), stage.seq_len, resolved.model.vocab_size,
                        stage.label_smoothing)
    with tempfile.TemporaryDirectory(prefix="minimind-probe-") as scratch:
        config = LoopConfig(
            run_dir=Path(scratch), optim=replace(resolved.training.optim, warmup=stage.warmup, grad_clip=stage.grad_clip),
            max_steps=steps + 1, batch_size=stage.batch_size, micro_batch=stage.micro_batch, seed=0, spec_hash="probe",
            device=device, autocast_dtype=torch.bfloat16 if resolved.model.dtype == "bfloat16" else None,
            eval_every=0, save_every=10**9, keep=1, progress=False, checkpoints=False,
        )
        run_stage(model, graph, runner, config)
        rows = [json.loads(line) for line in (Path(scratch) / METRICS_FILE).read_text().splitlines()]
    rates = [row["tokens_per_s"] for row in rows[1:] if row.get("tokens_per_s")]
    return statistics.median(rates) if rates else math.nan
