"""A stage's costs before it runs: steps, tokens, training FLOPs and peak memory per process.

- steps: `max_steps`, else epochs over the data file at about `BYTES_PER_TOKEN` bytes a token;
- tokens = steps x batch x seq_len (DPO: two sequences a pair);
- FLOPs per token = 3 x forward when the base trains, 2 x forward + the adapters' weight
  gradients under LoRA, plus the frozen reference's forward (a copy) or the teacher's (about
  2 FLOPs per parameter);
- memory = fp32 weights + fp32 gradients and optimizer state of the trainable parameters (1/N
  each with FSDP over N processes) + activations of one micro-batch at the spec's dtype +
  the frozen copy or teacher at the spec's dtype.
"""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx

from ..config import ModelConfig
from ..graph import Costs, ParamRole, nodes
from ..graph.costs import DTYPE_BYTES
from ..stages import RowLayout
from .model import MemoryEstimate

BYTES_PER_TOKEN = 3.5  # rough size of a BPE token in UTF-8 text, for data-file estimates only
OPTIMIZER_STATE_BYTES = {"AdamW": 8, "Adam": 8, "SGD": 4}  # per trainable parameter (moments; SGD momentum)


def estimated_steps(max_steps: int | None, epochs: int, data: Path | None, tokens_per_step: int) -> int | None:
    """The stage's optimizer steps: max_steps, else about epochs x the data file's tokens / tokens per step."""
    if max_steps is not None:
        return max_steps
    if data is None or not data.is_file():
        return None
    return max(1, math.ceil(epochs * data.stat().st_size / BYTES_PER_TOKEN / tokens_per_step))


def sequences_per_row(rows: RowLayout) -> int:
    return 2 if rows == RowLayout.PAIRS else 1  # a preference pair is a chosen and a rejected sequence


def flops_per_token(graph: nx.DiGraph, costs: Costs, base_trains: bool, frozen_forward: int) -> int:
    """Training FLOPs per token; `frozen_forward`: the forward FLOPs per token of a frozen model run beside it."""
    forward = costs.flops_per_token
    if base_trains:
        return 3 * forward + frozen_forward
    adapters = sum(op.flops for op in nodes(graph) if op.role == ParamRole.LORA)
    return 2 * forward + 2 * adapters + frozen_forward  # the adapters' weight gradients only


def memory_estimate(model: ModelConfig, costs: Costs, optimizer: str, micro_batch: int, seq_len: int, rows: RowLayout,
                    frozen_params: int, shards: int) -> MemoryEstimate:
    return MemoryEstimate(
        weights=4 * costs.total_params // shards,
        gradients=4 * costs.trainable_params // shards,
        optimizer=OPTIMIZER_STATE_BYTES[optimizer] * costs.trainable_params // shards,
        activations=costs.activation_bytes * micro_batch * sequences_per_row(rows) * seq_len // max(1, model.seq_len),
        frozen_models=frozen_params * DTYPE_BYTES[model.dtype],
        shards=shards,
    )
