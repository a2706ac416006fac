"""Grouped-query self-attention (GQA; n_kv_heads divides n_heads) with causal and padding
masks, attention dropout, optional QK-norm (an RMSNorm over each head's queries and keys
before RoPE, as MiniMind-3 and Qwen3 do), RoPE, a static KV cache, and three interchangeable
backends:

- eager:       explicit softmax(q k^T / sqrt(d) + mask) v, float32 softmax (the reference)
- sdpa:        torch.nn.functional.scaled_dot_product_attention
- flash-attn2: the `flash_attn` package, used when it imports and the tensors are CUDA
               fp16/bf16 with no padding mask; otherwise SDPA (logged once at INFO; a training
               run's plan says which backend runs and why).

Masks are built once per forward by the model (`build_attention_mask`, or
`PackedRows.attention_mask` for packed rows) as an additive float tensor (0 where a query may
attend, the dtype's minimum elsewhere), so fully padded rows stay finite instead of turning
into NaN. Packed rows on the flash backend skip the mask: flash-attn's variable-length kernel
takes the sample boundaries (`cu_seqlens`) instead.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .lora import Projection
from .packing import PackedRows
from .positional import apply_rotary

if TYPE_CHECKING:
    from .cache import StaticKVCache

BackendName = Literal["flash-attn2", "sdpa", "eager"]

try:  # optional dependency; never required
    from flash_attn import flash_attn_func as _flash_attn_func
    from flash_attn import flash_attn_varlen_func as _flash_attn_varlen_func
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _flash_attn_func = _flash_attn_varlen_func = None

_log = logging.getLogger(__name__)
_NOTICES_GIVEN: set[str] = set()


def _notice_once(reason: str) -> None:
    """Log (once per reason) that flash-attn2 fell back to SDPA. A training run says so itself, once, from its
    plan (`plan.attention_backend`); a library user sees it with logging at INFO."""
    if reason not in _NOTICES_GIVEN:
        _NOTICES_GIVEN.add(reason)
        _log.info("flash-attn2 requested but %s; using PyTorch SDPA instead", reason)


def build_attention_mask(
    attention_mask: torch.Tensor | None, query_length: int, key_length: int, offset: int, dtype: torch.dtype,
) -> torch.Tensor | None:
    """Additive mask (B|1, 1, T, S) combining causality and padding, or None when plain
    causal attention from position 0 (or a single new query) needs no explicit mask.

    attention_mask: (B, S) with 1 for real tokens and 0 for padding, covering cache + new tokens.
    offset: how many positions precede the T new queries (the cache length).
    """
    if attention_mask is None and (offset == 0 or query_length == 1):
        return None
    device = attention_mask.device if attention_mask is not None else None
    query_pos = torch.arange(offset, offset + query_length, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(key_length, device=device)[None, :]  # (1, S)
    allowed = (key_pos <= query_pos)[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :key_length].bool()  # (B, 1, T, S)
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    dropout: float, training: bool) -> torch.Tensor:
    # q: (B, H, T, d), k/v: (B, Hkv, S, d), mask: (B|1, 1, T, S) additive -> (B, H, T, d)
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)  # (B, H, S, d)
        v = v.repeat_interleave(n_rep, dim=1)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    T, S = scores.shape[-2:]
    if mask is not None:
        scores = scores + mask
    elif T > 1:
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, H, T, S)
    probs = F.dropout(probs, p=dropout, training=training)
    return probs @ v  # (B, H, T, d)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                   dropout: float, training: bool) -> torch.Tensor:
    # q: (B, H, T, d), k/v: (B, Hkv, S, d) -> (B, H, T, d)
    T, S = q.shape[-2], k.shape[-2]
    causal = mask is None and T > 1 and T == S
    if mask is not None:
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout if training else 0.0, is_causal=causal,
        enable_gqa=k.shape[1] != q.shape[1],
    )


def flash_unavailable(device_type: str, dtype: torch.dtype) -> str | None:
    """Why the flash-attn kernels cannot run on these tensors (None: they can)."""
    if _flash_attn_func is None:
        return "the flash_attn package is not installed"
    if device_type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return f"tensors are {device_type} {str(dtype).removeprefix('torch.')} (it needs CUDA fp16/bf16)"
    return None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    dropout: float, training: bool, packed: PackedRows | None = None) -> torch.Tensor:
    # q: (B, H, T, d), k/v: (B, Hkv, S, d) -> (B, H, T, d); falls back to SDPA where it cannot run
    reason = flash_unavailable(q.device.type, q.dtype)
    if reason is None and packed is not None and mask is None:  # packed rows: the variable-length kernel
        B, H, T, d = q.shape
        flat = [x.transpose(1, 2).reshape(B * T, x.shape[1], d) for x in (q, k, v)]  # (B*T, H|Hkv, d)
        out = _flash_attn_varlen_func(*flat, packed.cu_seqlens, packed.cu_seqlens, packed.max_seqlen, packed.max_seqlen,
                                      dropout_p=dropout if training else 0.0, causal=True)  # (B*T, H, d)
        return out.view(B, T, H, d).transpose(1, 2)
    if reason is None and mask is None:
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                               dropout_p=dropout if training else 0.0, causal=True)  # (B, T, H, d)
        return out.transpose(1, 2)
    _notice_once(reason or "a padding mask is present")
    return sdpa_attention(q, k, v, mask, dropout, training)


BACKENDS = {"eager": eager_attention, "sdpa": sdpa_attention, "flash-attn2": flash_attention}


class Attention(nn.Module):
    """Multi-head / grouped-query causal self-attention over q/k/v/o projections."""

    def __init__(self, *, q_proj: Projection, k_proj: Projection, v_proj: Projection, o_proj: Projection,
                 n_heads: int, n_kv_heads: int, head_dim: int, dropout: float, backend: BackendName,
                 q_norm: nn.Module | None = None, k_norm: nn.Module | None = None) -> None:
        super().__init__()
        if (q_norm is None) != (k_norm is None):
            raise ValueError("QK-norm needs both q_norm and k_norm")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; expected one of {sorted(BACKENDS)}")
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = q_proj, k_proj, v_proj, o_proj
        self.q_norm, self.k_norm = q_norm, k_norm  # per-head RMSNorm over head_dim (QK-norm), or None
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.dropout = dropout
        self.backend = backend

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                mask: torch.Tensor | None, cache: StaticKVCache | None = None, layer_index: int = 0,
                offset: int = 0, packed: PackedRows | None = None) -> torch.Tensor:
        # x: (B, T, D); cos/sin: (B|1, 1, T, d) or None (absolute positions); mask: (B|1, 1, T, S);
        # packed: the sample boundaries of packed rows (the flash backend's variable-length kernel)
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, d)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, d)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # each head normalised over its d features, before RoPE
        if cos is not None and sin is not None:
            q, k = apply_rotary(q, k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer_index, k, v, offset)  # (B, Hkv, offset + T, d) views of the buffers
        if self.backend == "flash-attn2":
            out = flash_attention(q, k, v, mask, self.dropout, self.training, packed)  # (B, H, T, d)
        else:
            out = BACKENDS[self.backend](q, k, v, mask, self.dropout, self.training)  # (B, H, T, d)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*d)
        return self.o_proj(out)  # (B, T, D)


def build_attention(**kwargs: Any) -> Attention:
    return Attention(**kwargs)
