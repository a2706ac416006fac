"""QLoRA in the engine: hold a compiled model's frozen base projections in NF4.

The plan decides (`StagePlan.base_quant`, from `techniques.quant`: scheme nf4, where base) that
a stage training only LoRA adapters keeps its base in NF4; the run calls `quantize_base` on the
stage's model after the input weights (`--init`, or the previous stage's `final/`) are loaded
and before the optimizer is built. The graph says what is quantised: every linear node (the
q/k/v/o/gate/up/down projections of every layer, MoE experts included), each a `Projection`
whose qualified name is the node id. Embeddings, norms, the router and the head stay at full
precision, as QLoRA and bitsandbytes' `Linear4bit` do (the head is tied to the embedding in
most small models, and both are read row by row or are a small share of the weights).

What is saved: a quantised projection's state dict holds `weight` dequantised, so checkpoints
and a stage's `final/` are ordinary full-precision models (loaded by `load_model`, exported,
merged) equal to what was trained; NF4 is idempotent (`builders/nf4.py`), so a resume or the
next stage re-quantises that saved base to the very same codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
from torch import nn

from builders.lora import Projection

from ..graph import OpType, nodes


@dataclass(frozen=True)
class QuantizedBase:
    """What `quantize_base` did, measured on the live tensors."""

    scheme: str
    matrices: int  # projections now in NF4
    params: int  # their weights
    bytes: int  # the NF4 tensors' storage (codes, block scales, group factors)

    @property
    def ratio(self) -> float:
        return self.bytes / (4 * self.params) if self.params else 0.0


def base_projections(model: nn.Module, graph: nx.DiGraph) -> list[Projection]:
    """The projections of the graph's linear nodes: the frozen base QLoRA quantises."""
    found = []
    for op in nodes(graph):
        if op.op == OpType.LINEAR:
            module = model.get_submodule(op.id)
            if not isinstance(module, Projection):
                raise TypeError(f"{op.id} is a {type(module).__name__}, not a Projection")
            found.append(module)
    return found


def quantize_base(model: nn.Module, graph: nx.DiGraph, scheme: str = "nf4") -> QuantizedBase:
    """Store every base projection's weight in NF4 (frozen from now on); returns what it holds."""
    if scheme != "nf4":
        raise ValueError(f"quantisation scheme {scheme!r}: only nf4 is implemented")
    for projection in base_projections(model, graph):
        projection.quantize_base_()
    measured = quantized_base(model, graph)
    assert measured is not None
    return measured


def quantized_base(model: nn.Module, graph: nx.DiGraph) -> QuantizedBase | None:
    """What the model's base holds in NF4, measured on the live tensors; None when nothing is quantised."""
    stored = [nf4 for nf4 in (p.nf4_weight() for p in base_projections(model, graph)) if nf4 is not None]
    if not stored:
        return None
    return QuantizedBase("nf4", len(stored), sum(q.numel for q in stored), sum(q.nbytes for q in stored))
