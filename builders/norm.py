"""Normalisation builders: RMSNorm and LayerNorm over the last (model) dimension.

Both compute in float32 and cast back, as MiniMind and Hugging Face Llama do, so a bf16
residual stream is normalised at full precision. The compiler places one before attention,
one before the MLP and one at the end of the stack (`model.norm`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight; the weight starts at one."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., dim) -> (..., dim)
        normed = F.rms_norm(x.float(), (self.dim,), eps=self.eps)  # (..., dim) fp32
        return self.weight * normed.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class LayerNorm(nn.Module):
    """(x - mean) / sqrt(var + eps) * weight + bias; weight one, bias zero at start."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))
        self.bias = nn.Parameter(torch.empty(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., dim) -> (..., dim)
        normed = F.layer_norm(x.float(), (self.dim,), eps=self.eps)  # (..., dim) fp32
        return self.weight * normed.to(x.dtype) + self.bias

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def build_rmsnorm(*, dim: int, eps: float) -> RMSNorm:
    return RMSNorm(dim, eps)


def build_layernorm(*, dim: int, eps: float) -> LayerNorm:
    return LayerNorm(dim, eps)
