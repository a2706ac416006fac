"""A stage's costs before it runs: steps, tokens, training FLOPs and peak memory per process.

- steps: `max_steps`, else epochs over the data file at about `BYTES_PER_TOKEN` bytes a token;
- tokens = steps x batch x seq_len (DPO: two sequences a pair; GRPO: num_generations a prompt, each
  at most seq_len);
- FLOPs per token = 3 x forward when the base trains, 2 x forward + the adapters' weight
  gradients under LoRA, plus the frozen reference's forward (a copy) or the teacher's (about
  2 FLOPs per parameter);
- memory = fp32 weights + fp32 gradients and optimizer state of the trainable parameters (1/N
  each with FSDP over N processes) + activations of one micro-batch at the spec's dtype +
  the frozen copy or teacher at the spec's dtype. Under QLoRA the base's projections count at their
  NF4 bytes (`nf4_bytes`, the format of `builders/nf4.py`; a test checks the two agree).
"""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx

from ..config import ModelConfig, QuantConfig
from ..graph import Costs, OpType, ParamRole, nodes
from ..graph.ir import LinearAttrs
from ..graph.costs import DTYPE_BYTES
from ..stages import RowLayout
from .model import BaseQuant, MemoryEstimate

BYTES_PER_TOKEN = 3.5  # rough size of a BPE token in UTF-8 text, for data-file estimates only
OPTIMIZER_STATE_BYTES = {"AdamW": 8, "Adam": 8, "SGD": 4}  # per trainable parameter (moments; SGD momentum)


def estimated_steps(max_steps: int | None, epochs: int, data: Path | None, tokens_per_step: int) -> int | None:
    """The stage's optimizer steps: max_steps, else about epochs x the data file's tokens / tokens per step."""
    if max_steps is not None:
        return max_steps
    if data is None or not data.is_file():
        return None
    return max(1, math.ceil(epochs * data.stat().st_size / BYTES_PER_TOKEN / tokens_per_step))


NF4_BLOCK_SIZE = 64  # weights per block scale (builders/nf4.py BLOCK_SIZE)
NF4_SCALE_BLOCK_SIZE = 256  # block scales per fp32 factor (builders/nf4.py SCALE_BLOCK_SIZE)


def nf4_bytes(numel: int) -> int:
    """Bytes of one weight of `numel` elements in NF4: 4-bit codes of the blocks of 64 (the last one zero-padded),
    an 8-bit scale a block, an fp32 factor a group of 256 scales."""
    blocks = -(-numel // NF4_BLOCK_SIZE)
    return blocks * NF4_BLOCK_SIZE // 2 + blocks + 4 * -(-blocks // NF4_SCALE_BLOCK_SIZE)


def base_quant(graph: nx.DiGraph, quant: QuantConfig) -> BaseQuant:
    """What QLoRA quantises (every decoder projection of the graph: its linear nodes) and its bytes."""
    sizes = [op.attrs.in_features * op.attrs.out_features for op in nodes(graph)
             if op.op == OpType.LINEAR and isinstance(op.attrs, LinearAttrs)]
    return BaseQuant(quant.scheme, len(sizes), sum(sizes), sum(nf4_bytes(n) for n in sizes))


def sequences_per_row(rows: RowLayout, group: int = 1) -> int:
    """A preference pair is a chosen and a rejected sequence; a GRPO prompt is `group` sampled sequences."""
    return 2 if rows == RowLayout.PAIRS else group if rows == RowLayout.GROUPS else 1


def flops_per_token(graph: nx.DiGraph, costs: Costs, base_trains: bool, frozen_forward: int) -> int:
    """Training FLOPs per token; `frozen_forward`: the forward FLOPs per token of a frozen model run beside it."""
    forward = costs.flops_per_token
    if base_trains:
        return 3 * forward + frozen_forward
    adapters = sum(op.flops for op in nodes(graph) if op.role == ParamRole.LORA)
    return 2 * forward + 2 * adapters + frozen_forward  # the adapters' weight gradients only


def memory_estimate(model: ModelConfig, costs: Costs, optimizer: str, micro_batch: int, seq_len: int, rows: RowLayout,
                    frozen_params: int, shards: int, group: int = 1, quantized: BaseQuant | None = None) -> MemoryEstimate:
    weights = 4 * costs.total_params if quantized is None else 4 * (costs.total_params - quantized.params) + quantized.bytes
    return MemoryEstimate(
        weights=weights // shards,
        gradients=4 * costs.trainable_params // shards,
        optimizer=OPTIMIZER_STATE_BYTES[optimizer] * costs.trainable_params // shards,
        activations=costs.activation_bytes * micro_batch * sequences_per_row(rows, group) * seq_len // max(1, model.seq_len),
        frozen_models=frozen_params * DTYPE_BYTES[model.dtype],
        shards=shards,
    )
