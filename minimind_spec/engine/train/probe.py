"""Measure a stage's training throughput before committing to it (`train --plan --probe`).

The probe trains the stage's real model (its trainable roles, batch, micro-batch, `seq_len`,
precision and device, as planned) for a few optimizer steps through the same loop as a run, on
random token rows with every position trained, in a scratch directory it removes. Stages that
need a frozen model (a teacher, a reference) are not probed. The first step (allocation,
kernel selection) is not counted; the rate is the median of the loop's own tokens/s over the
steps after it. The plan turns the rate into its wall-time estimate.
"""

from __future__ import annotations

import math
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import networkx as nx
import numpy as np

from ...graph import ParamRole
from ...metrics import METRICS_FILE, read_metrics
from ...plan import StagePlan
from ...stages import FrozenModel, stage
from ..compile import compile_graph
from ..data.packing import Row
from ..trainability import set_trainable
from .loop import LoopSettings, train_stage
from .precision import PrecisionRuntime
from .stages import StageData, StageParts
from .stages.batches import collate_rows
from .stages.language_model import LanguageModelLoss


def probed(kind: str) -> bool:
    """Stages a probe can run: those that need nothing but rows."""
    return stage(kind).frozen == FrozenModel.NONE


def random_rows(count: int, seq_len: int, vocab_size: int) -> StageData:
    """`count` rows of uniformly random token ids (seeded by row), every position trained, none held out."""
    def row(index: int) -> Row:
        ids = np.random.default_rng(index).integers(0, vocab_size, seq_len, dtype=np.int64)
        return Row(ids, ids.copy(), np.zeros(seq_len, dtype=bool), None, seq_len)

    return StageData(np.arange(count), np.arange(0), lambda indices, device: collate_rows([row(i) for i in indices], device),
                     f"{count} random rows")


def probe_stage(graph: nx.DiGraph, plan: StagePlan, vocab_size: int, device: str, steps: int = 3) -> float:
    """Tokens per second of `plan` on `device`: the median over `steps` optimizer steps after one warm-up step."""
    if not probed(plan.kind):
        raise ValueError(f"the {plan.kind} stage is not probed: it needs its data and frozen model")
    model = compile_graph(graph, device=device, seed=0)
    set_trainable(model, graph, {ParamRole(role) for role in plan.trainable_roles})
    label_smoothing = getattr(plan.objective, "label_smoothing", 0.0)
    parts = StageParts(random_rows(plan.batch_size * (steps + 1), plan.seq_len, vocab_size), LanguageModelLoss(label_smoothing))
    plan = replace(plan, max_steps=steps + 1)
    with tempfile.TemporaryDirectory(prefix="minimind-probe-") as scratch:
        settings = LoopSettings(Path(scratch), device, eval_every=0, save_every=10**9, keep=1, checkpoints=False, progress=False)
        train_stage(plan, parts, model, graph, settings, PrecisionRuntime(plan.precision, device))
        rows = read_metrics(Path(scratch) / METRICS_FILE)
    rates = [row.tokens_per_s for row in rows[1:] if row.tokens_per_s]
    return statistics.median(rates) if rates else math.nan
