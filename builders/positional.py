"""Positional encodings: rotary embeddings (RoPE) with optional context scaling, and
learned absolute position embeddings (the 'Absolute' ablation).

RoPE scaling kinds, as the spec names them:
- none:   inv_freq_i = theta^(-2i/d)
- linear: position interpolation, inv_freq / factor
- ntk:    static NTK-aware scaling, theta' = theta * factor^(d / (d - 2))
- yarn:   per-frequency blend of interpolated and original frequencies between the
          correction dims given by beta_fast / beta_slow at the original context length,
          with cos/sin multiplied by the attention factor (YaRN paper; the same formula as
          Hugging Face transformers' `_compute_yarn_parameters` with truncation on).
The cos/sin tables are computed once (float32) for every position up to
`max_position_embeddings` and indexed by position, so decoding does no trigonometry.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

RopeScalingKind = Literal["none", "linear", "ntk", "yarn"]


def rope_inverse_frequencies(
    *, head_dim: int, theta: float, scaling: RopeScalingKind = "none", factor: float = 1.0,
    original_max_position_embeddings: int = 2048, beta_fast: float = 32.0, beta_slow: float = 1.0,
    attention_factor: float = 1.0,
) -> tuple[torch.Tensor, float]:
    """(inv_freq (head_dim / 2,) float32, scale applied to cos and sin)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim  # (d/2,)
    if scaling == "ntk":
        theta = theta * factor ** (head_dim / (head_dim - 2))
    pos_freqs = theta ** exponents  # (d/2,)
    inv_freq = 1.0 / pos_freqs
    if scaling in ("none", "ntk"):
        return inv_freq, 1.0
    if scaling == "linear":
        return inv_freq / factor, 1.0
    if scaling != "yarn":
        raise ValueError(f"unknown RoPE scaling {scaling!r}")

    def correction_dim(rotations: float) -> float:
        # The dimension whose wavelength fits `rotations` times in the original context.
        return head_dim * math.log(original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high: float = min(math.ceil(correction_dim(beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # (d/2,)
    extrapolation_weight = 1 - ramp  # 1: keep the original frequency, 0: interpolate
    interpolated = 1.0 / (factor * pos_freqs)
    blended = interpolated * (1 - extrapolation_weight) + inv_freq * extrapolation_weight
    return blended, attention_factor


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables; forward(position_ids) -> (cos, sin) for those positions."""

    cos_table: torch.Tensor  # (max_position_embeddings, head_dim) float32 buffers
    sin_table: torch.Tensor

    def __init__(
        self, *, head_dim: int, max_position_embeddings: int, theta: float, scaling: RopeScalingKind = "none",
        factor: float = 1.0, original_max_position_embeddings: int = 2048, beta_fast: float = 32.0,
        beta_slow: float = 1.0, attention_factor: float = 1.0,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_position_embeddings = max_position_embeddings
        self.frequency_args: dict[str, Any] = dict(
            head_dim=head_dim, theta=theta, scaling=scaling, factor=factor,
            original_max_position_embeddings=original_max_position_embeddings,
            beta_fast=beta_fast, beta_slow=beta_slow, attention_factor=attention_factor,
        )
        self.register_buffer("cos_table", torch.empty(max_position_embeddings, head_dim), persistent=False)
        self.register_buffer("sin_table", torch.empty(max_position_embeddings, head_dim), persistent=False)
        if self.cos_table.device.type != "meta":
            self.reset_tables()

    @torch.no_grad()
    def reset_tables(self) -> None:
        """(Re)compute the tables on the buffers' device, in float32."""
        device = self.cos_table.device
        inv_freq, scale = rope_inverse_frequencies(**self.frequency_args)
        positions = torch.arange(self.max_position_embeddings, dtype=torch.int64).to(torch.float32)
        freqs = torch.outer(positions, inv_freq)  # (P, d/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (P, d)
        self.cos_table = (angles.cos() * scale).to(device)
        self.sin_table = (angles.sin() * scale).to(device)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # position_ids: (B, T) or (T,) -> cos, sin: (B, 1, T, d) or (1, 1, T, d), float32
        cos = self.cos_table[position_ids]
        sin = self.sin_table[position_ids]
        if cos.dim() == 2:
            return cos[None, None], sin[None, None]
        return cos[:, None], sin[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    # x: (..., d) -> (..., d), halves swapped with the first negated
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def swap_halves(x: torch.Tensor) -> torch.Tensor:
    # x: (..., d) -> (..., d), the two halves swapped (one copy; its backward is the same swap)
    return x.unflatten(-1, (2, x.shape[-1] // 2)).flip(-2).flatten(-2)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # q: (B, H, T, d), k: (B, Hkv, T, d), cos/sin: (B|1, 1, T, d) -> rotated q, k in their own dtype
    # x * cos + rotate_half(x) * sin, with the negation moved onto the small sin table
    # (rotate_half(x) * sin == swap_halves(x) * signed_sin): three kernels per tensor instead of five,
    # and a backward without the zero-filled slice gradients of rotate_half.
    cos, sin = cos.to(q.dtype), sin.to(q.dtype)
    half = sin.shape[-1] // 2
    signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # (B|1, 1, T, d)
    return torch.addcmul(q * cos, swap_halves(q), signed_sin), torch.addcmul(k * cos, swap_halves(k), signed_sin)


class LearnedPositionEmbedding(nn.Module):
    """Absolute positions: a learned (max_position_embeddings, dim) table added to the tokens."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim))

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        # position_ids: (B, T) or (T,) -> (B, T, dim) or (T, dim)
        return self.weight[position_ids]


def build_rope(**kwargs: Any) -> RotaryEmbedding:
    return RotaryEmbedding(**kwargs)


def build_position_embedding(*, num_embeddings: int, dim: int) -> LearnedPositionEmbedding:
    return LearnedPositionEmbedding(num_embeddings, dim)
