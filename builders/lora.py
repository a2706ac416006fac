"""Projections and LoRA: the bias-free linear layer every projection uses, its optional
low-rank adapter, and model-wide helpers (merge, unmerge, adapter-only state dict).

A `Projection` owns its weight under the Hugging Face name (`...q_proj.weight`); when the
spec puts LoRA on it, it also holds a `lora` submodule owning `A` (rank, in) and `B`
(out, rank), so adapter parameters are `...q_proj.lora.A` / `...q_proj.lora.B`. The update
is `(alpha / rank) * B A dropout(x)`, as in the LoRA paper, MiniMind and peft. B starts at
zero, so a fresh adapter leaves the base model's output unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


class LoRAAdapter(nn.Module):
    """The low-rank update of one projection: (alpha / rank) * B @ A."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.empty(out_features, rank))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def reset_parameters(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        with torch.no_grad():
            self.A.normal_(0.0, std, generator=generator)
            self.B.zero_()

    def delta_weight(self) -> torch.Tensor:
        """The dense update this adapter adds to the base weight: (out, in)."""
        return (self.B @ self.A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., in) -> (..., rank) -> (..., out)
        return F.linear(F.linear(self.dropout(x), self.A), self.B) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


class Projection(nn.Module):
    """A bias-free linear layer (weight (out, in)), optionally with a LoRA adapter."""

    def __init__(self, in_features: int, out_features: int, lora: LoRAAdapter | None = None) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.lora = lora
        self.merged = False
        self.adapter_enabled = True  # False: the base projection alone (a DPO reference without a second copy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., in) -> (..., out)
        y = F.linear(x, self.weight)
        if self.lora is not None and not self.merged and self.adapter_enabled:
            y = y + self.lora(x)
        return y

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the weight (for fast inference); `unmerge` undoes it."""
        if self.lora is not None and not self.merged:
            self.weight.add_(self.lora.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.lora is not None and self.merged:
            self.weight.sub_(self.lora.delta_weight().to(self.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias=False"


def build_lora(*, in_features: int, out_features: int, rank: int, alpha: float, dropout: float) -> LoRAAdapter:
    return LoRAAdapter(in_features, out_features, rank, alpha, dropout)


def build_linear(*, in_features: int, out_features: int, lora: LoRAAdapter | None = None) -> Projection:
    return Projection(in_features, out_features, lora)


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Inside, every unmerged adapter is skipped: the model computes as its base."""
    projections = [m for m in model.modules() if isinstance(m, Projection) and m.lora is not None]
    if any(m.merged for m in projections):
        raise ValueError("adapters are merged into the weights; unmerge_lora(model) first")
    for module in projections:
        module.adapter_enabled = False
    try:
        yield
    finally:
        for module in projections:
            module.adapter_enabled = True


def has_adapters(model: nn.Module) -> bool:
    return any(isinstance(m, Projection) and m.lora is not None for m in model.modules())


def merge_lora(model: nn.Module) -> int:
    """Merge every adapter into its projection; returns how many were merged."""
    merged = 0
    for module in model.modules():
        if isinstance(module, Projection) and module.lora is not None and not module.merged:
            module.merge()
            merged += 1
    return merged


def unmerge_lora(model: nn.Module) -> int:
    """Undo `merge_lora`; returns how many adapters were unmerged."""
    unmerged = 0
    for module in model.modules():
        if isinstance(module, Projection) and module.merged:
            module.unmerge()
            unmerged += 1
    return unmerged


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (`...lora.A`, `...lora.B`), detached; the base is not included."""
    return {name: tensor.detach() for name, tensor in model.state_dict().items()
            if name.endswith((".lora.A", ".lora.B"))}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapter tensors saved by `lora_state_dict`; every adapter must be present."""
    expected = set(lora_state_dict(model))
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise KeyError(f"adapter state dict mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict(state, strict=False)
