"""The module graph's vocabulary: op types, edge kinds, parameter roles, merge points, and one
frozen attribute dataclass per op type.

A graph node carries an `OpNode`; its `attrs` hold every argument the op's builder takes, so
the compiler reads the graph alone. `OpNode` checks that its attrs class matches its op type,
so a node can never carry another op's attributes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from ..schema import MergeOp, MergePointName, ProjectionName

INPUT_ID = "input_ids"
OUTPUT_ID = "output"


class OpType(StrEnum):
    INPUT = "input"
    EMBEDDING = "embedding"
    POSITION_EMBEDDING = "position_embedding"
    ROPE = "rope"
    RMSNORM = "rmsnorm"
    LAYERNORM = "layernorm"
    LINEAR = "linear"
    ATTENTION = "attention"
    ADD = "add"  # merge point: residual add
    GLU = "glu"  # act(gate) * up
    ROUTER = "router"
    MOE_COMBINE = "moe_combine"  # merge point: gate-weighted sum of expert outputs
    AUX_LOSS = "aux_loss"
    LM_HEAD = "lm_head"
    LORA = "lora"
    TOKEN_ROWS = "token_rows"  # trainable rows of the frozen embedding / head (LoRA trainable tokens)
    OUTPUT = "output"


MERGE_OPS = frozenset({OpType.ADD, OpType.MOE_COMBINE})


class EdgeKind(StrEnum):
    """What flows along an edge."""

    DATA = "data"  # an activation into the next op
    RESIDUAL = "residual"  # the residual stream into a residual add
    ADAPTER = "adapter"  # into and out of a LoRA adapter
    ROUTING = "routing"  # router weights into the MoE combine
    AUX = "aux"  # router logits into the load-balancing loss


class ParamRole(StrEnum):
    """What a node's parameters are for; training stages choose which roles train."""

    EMBEDDING = "embedding"  # token and position embeddings (and a tied lm_head)
    ATTENTION = "attention"  # q/k/v/o projections
    MLP = "mlp"  # gate/up/down projections, experts included
    ROUTER = "router"  # MoE routing weights
    NORM = "norm"
    HEAD = "head"  # an untied lm_head
    LORA = "lora"  # adapters


BASE_ROLES = frozenset(role for role in ParamRole if role != ParamRole.LORA)
ALL_ROLES = frozenset(ParamRole)


@dataclass(frozen=True)
class MergePoint:
    """Where two streams meet, in the spec's own names (`concat_merge_points`)."""

    source: MergePointName
    target: MergePointName
    op: MergeOp

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}"


RopeScalingKind = Literal["none", "linear", "ntk", "yarn"]
NormPlace = Literal["input", "post_attention", "final", "query", "key"]  # before attention, before the MLP, after the stack;
# query/key: QK-norm, per head over head_dim, between the q/k projections and RoPE
MLPKind = Literal["dense", "routed_expert", "shared_expert"]


@dataclass(frozen=True)
class InputAttrs:
    dtype: str = "int64"


@dataclass(frozen=True)
class EmbeddingAttrs:
    """A lookup table; for EMBEDDING the tokens, for POSITION_EMBEDDING absolute positions."""

    num_embeddings: int
    dim: int


@dataclass(frozen=True)
class RopeAttrs:
    head_dim: int
    max_position_embeddings: int
    theta: float
    scaling: RopeScalingKind
    factor: float
    original_max_position_embeddings: int
    beta_fast: float
    beta_slow: float
    attention_factor: float


@dataclass(frozen=True)
class NormAttrs:
    dim: int
    eps: float
    place: NormPlace


@dataclass(frozen=True)
class LinearAttrs:
    """A bias-free projection, named by its role in the layer (q_proj ... down_proj)."""

    in_features: int
    out_features: int
    projection: ProjectionName


@dataclass(frozen=True)
class LoRAAttrs:
    in_features: int
    out_features: int
    rank: int
    alpha: float
    scaling: float  # alpha / rank: the factor on B A x
    dropout: float
    target: str  # id of the projection this adapter adds to


@dataclass(frozen=True)
class TokenRowsAttrs:
    token_ids: tuple[int, ...]  # the rows that train
    dim: int
    target: str  # id of the embedding or head whose rows these replace


@dataclass(frozen=True)
class AttentionAttrs:
    n_heads: int
    n_kv_heads: int
    head_dim: int
    dropout: float
    backend: Literal["flash-attn2", "sdpa", "eager"]
    flops_context: int  # keys each query attends to in the FLOP count (the spec's seq_len)


@dataclass(frozen=True)
class AddAttrs:
    """A residual (or embedding) add; dropout and stochastic depth act on the branch it adds."""

    merge_point: MergePoint
    dropout: float = 0.0
    sd_prob: float = 0.0


@dataclass(frozen=True)
class GLUAttrs:
    activation: Literal["SiLU", "GELU", "ReLU"]
    hidden: int
    kind: MLPKind


@dataclass(frozen=True)
class RouterAttrs:
    d_model: int
    num_experts: int
    top_k: int
    norm_topk_prob: bool
    aux_loss: bool
    aux_loss_weight: float


@dataclass(frozen=True)
class MoECombineAttrs:
    merge_point: MergePoint
    top_k: int
    num_experts: int
    num_shared_experts: int


@dataclass(frozen=True)
class AuxLossAttrs:
    weight: float
    layers: int


@dataclass(frozen=True)
class LMHeadAttrs:
    in_features: int
    out_features: int
    tied: bool
    weight_elements: int  # in x out, counted once: zero new parameters when tied


@dataclass(frozen=True)
class OutputAttrs:
    pass


OpAttrs = (InputAttrs | EmbeddingAttrs | RopeAttrs | NormAttrs | LinearAttrs | LoRAAttrs | TokenRowsAttrs | AttentionAttrs | AddAttrs
           | GLUAttrs | RouterAttrs | MoECombineAttrs | AuxLossAttrs | LMHeadAttrs | OutputAttrs)

ATTRS_OF: dict[OpType, type] = {
    OpType.INPUT: InputAttrs, OpType.EMBEDDING: EmbeddingAttrs, OpType.POSITION_EMBEDDING: EmbeddingAttrs,
    OpType.ROPE: RopeAttrs, OpType.RMSNORM: NormAttrs, OpType.LAYERNORM: NormAttrs, OpType.LINEAR: LinearAttrs,
    OpType.LORA: LoRAAttrs, OpType.ATTENTION: AttentionAttrs, OpType.ADD: AddAttrs, OpType.GLU: GLUAttrs,
    OpType.ROUTER: RouterAttrs, OpType.MOE_COMBINE: MoECombineAttrs, OpType.AUX_LOSS: AuxLossAttrs,
    OpType.LM_HEAD: LMHeadAttrs, OpType.OUTPUT: OutputAttrs, OpType.TOKEN_ROWS: TokenRowsAttrs,
}


@dataclass(frozen=True)
class OpNode:
    """One op of the graph. `flops` are forward FLOPs per token (multiply-add = 2);
    `token_fraction` is the share of tokens the op sees (top_k / num_experts inside a routed
    expert, else 1); `role` says what its parameters are for (None when it has none)."""

    id: str
    op: OpType
    attrs: OpAttrs
    out_shape: str
    in_shapes: tuple[str, ...] = ()
    params: int = 0
    flops: int = 0
    layer: int | None = None
    role: ParamRole | None = None
    token_fraction: float = 1.0
    tied_to: str | None = None  # id of the node whose weight this one shares

    def __post_init__(self) -> None:
        if not isinstance(self.attrs, ATTRS_OF[self.op]):
            raise TypeError(f"{self.id}: op {self.op} takes {ATTRS_OF[self.op].__name__}, got {type(self.attrs).__name__}")
        if (self.role is None) != (self.params == 0 and self.tied_to is None):
            raise ValueError(f"{self.id}: a node has a parameter role exactly when it owns or shares parameters")

    @property
    def short_name(self) -> str:
        """The id without the layer prefix, e.g. 'self_attn.q_proj'."""
        if self.layer is None:
            return self.id
        return self.id.split(f"layers.{self.layer}.", 1)[1]


def attrs_dict(attrs: OpAttrs) -> dict[str, Any]:
    """The attributes as a flat dict for reports and JSON (merge points as 'source -> target')."""
    return {f.name: (str(value) if isinstance(value := getattr(attrs, f.name), MergePoint) else value)
            for f in dataclasses.fields(attrs)}
