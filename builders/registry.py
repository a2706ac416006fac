"""The closed builder registry: graph op type -> function building that op's module.

Keys are the op type names of the module graph (`minimind_spec.graph.OpType` values); the
builders take flat keyword arguments and already-built submodules, never spec objects. The
mapping is read-only: a spec can only pick among these builders, never name code to import.
Op types that own no module of their own (input, residual add, aux loss, output) are wired
by `MiniMindForCausalLM` itself and have no entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from torch import nn

from .attention import build_attention
from .embedding import build_embedding, build_lm_head, build_token_rows
from .lora import build_linear, build_lora
from .mlp import build_glu
from .moe import build_moe, build_router
from .norm import build_layernorm, build_rmsnorm
from .positional import build_position_embedding, build_rope

BUILDERS: Mapping[str, Callable[..., nn.Module]] = MappingProxyType({
    "embedding": build_embedding,
    "position_embedding": build_position_embedding,
    "rope": build_rope,
    "rmsnorm": build_rmsnorm,
    "layernorm": build_layernorm,
    "linear": build_linear,
    "lora": build_lora,
    "attention": build_attention,
    "glu": build_glu,
    "router": build_router,
    "moe_combine": build_moe,
    "lm_head": build_lm_head,
    "token_rows": build_token_rows,
})


def builder_for(op_type: str) -> Callable[..., nn.Module]:
    """The builder of `op_type`; a clear error for op types with no builder."""
    try:
        return BUILDERS[str(op_type)]
    except KeyError:
        raise KeyError(f"no builder for op type {str(op_type)!r}; known: {', '.join(sorted(BUILDERS))}") from None
