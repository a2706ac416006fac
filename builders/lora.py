"""Projections and LoRA: the bias-free linear layer every projection uses, its optional
low-rank adapter, and model-wide helpers (merge, unmerge, adapter-only state dict).

A `Projection` owns its weight under the Hugging Face name (`...q_proj.weight`); when the
spec puts LoRA on it, it also holds a `lora` submodule owning `A` (rank, in) and `B`
(out, rank), so adapter parameters are `...q_proj.lora.A` / `...q_proj.lora.B`. The update
is `(alpha / rank) * B A dropout(x)`, as in the LoRA paper, MiniMind and peft. B starts at
zero, so a fresh adapter leaves the base model's output unchanged.

QLoRA: `quantize_base_()` stores a projection's frozen weight in NF4 (`builders/nf4.py`),
dequantised on the fly; its state dict still holds `weight` (dequantised), and `merge()`
dequantises the base for good before folding the update in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .nf4 import NF4Weight, dequantize_nf4, nf4_linear, quantize_nf4
from .token_rows import TokenRows, token_rows_of


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
        self.nf4_dtype = torch.float32  # the dtype an NF4 base dequantises to (set by quantize_base_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., in) -> (..., out)
        nf4 = self.nf4_weight()
        y = F.linear(x, self.weight) if nf4 is None else nf4_linear(x, nf4)
        if self.lora is not None and not self.merged and self.adapter_enabled:
            y = y + self.lora(x)
        return y

    # QLoRA: the frozen base weight stored in NF4 (builders/nf4.py). The three NF4 tensors are
    # non-persistent buffers (they follow .to(device)); the state dict still holds `weight`,
    # dequantised, so a quantised model saves, loads and exports as a full-precision one.
    _NF4_BUFFERS = ("nf4_codes", "nf4_scale_codes", "nf4_scale_factors")

    @property
    def quantized(self) -> bool:
        return "nf4_codes" in self._buffers

    def nf4_weight(self) -> NF4Weight | None:
        """The NF4 base weight, or None when the weight is a full-precision Parameter."""
        if not self.quantized:
            return None
        codes, scale_codes, factors = (self._buffers[name] for name in self._NF4_BUFFERS)
        assert codes is not None and scale_codes is not None and factors is not None
        return NF4Weight(codes, scale_codes, factors, (self.out_features, self.in_features))

    def dense_weight(self) -> torch.Tensor:
        """The base weight (out, in) at full precision: the Parameter, or the NF4 weight dequantised."""
        nf4 = self.nf4_weight()
        return self.weight if nf4 is None else dequantize_nf4(nf4, self.nf4_dtype)

    @torch.no_grad()
    def quantize_base_(self) -> NF4Weight:
        """Replace the weight Parameter by its NF4 form (frozen: nothing of it trains again); returns it."""
        nf4 = self.nf4_weight()
        if nf4 is not None:
            return nf4
        if self.merged:
            raise ValueError("the adapter is merged into the weight; unmerge before quantising the base")
        self.nf4_dtype = self.weight.dtype  # what it dequantises to (the master weights' dtype)
        nf4 = quantize_nf4(self.weight)
        del self.weight
        for name, tensor in zip(self._NF4_BUFFERS, nf4.tensors()):
            self.register_buffer(name, tensor, persistent=False)
        return nf4

    @torch.no_grad()
    def dequantize_base_(self) -> None:
        """Back to a full-precision (frozen) weight Parameter holding the dequantised values."""
        if self.quantized:
            weight = self.dense_weight()
            for name in self._NF4_BUFFERS:
                delattr(self, name)
            self.weight = nn.Parameter(weight, requires_grad=False)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.quantized:
            destination[prefix + "weight"] = self.dense_weight().detach()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any], strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if not self.quantized:
            return
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        incoming = state_dict[key]
        if tuple(incoming.shape) != (self.out_features, self.in_features):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(incoming.shape)}, the "
                              f"shape in current model is {(self.out_features, self.in_features)}")
            return
        # NF4 is idempotent: a dequantised base (a checkpoint, a stage's final/) gives back the same codes
        for name, tensor in zip(self._NF4_BUFFERS, quantize_nf4(incoming.to(self.nf4_codes.device)).tensors()):
            self.register_buffer(name, tensor, persistent=False)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the weight (for fast inference); `unmerge` undoes it. An NF4 base is
        dequantised first (`dequantize_base_`): the merged weight is the dequantised base + the update."""
        if self.lora is not None and not self.merged:
            self.dequantize_base_()
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


ADAPTER_SUFFIXES = (".lora.A", ".lora.B", ".token_rows.values")  # the tensors an adapter file holds


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Inside, every unmerged adapter is skipped: the model computes as its base."""
    projections = [m for m in model.modules() if isinstance(m, Projection) and m.lora is not None]
    rows = [m for m in model.modules() if isinstance(m, TokenRows)]
    if any(m.merged for m in projections) or any(r.merged for r in rows):
        raise ValueError("adapters are merged into the weights; unmerge_lora(model) first")
    for module in projections:
        module.adapter_enabled = False
    for row in rows:
        row.enabled = False
    try:
        yield
    finally:
        for module in projections:
            module.adapter_enabled = True
        for row in rows:
            row.enabled = True


def has_adapters(model: nn.Module) -> bool:
    return any((isinstance(m, Projection) and m.lora is not None) or isinstance(m, TokenRows) for m in model.modules())


def merge_lora(model: nn.Module) -> int:
    """Merge every adapter into its projection; returns how many were merged."""
    merged = 0
    for module in model.modules():
        if isinstance(module, Projection) and module.lora is not None and not module.merged:
            module.merge()
            merged += 1
    for rows, weight in token_rows_of(model):  # trained token rows written into the embedding (and untied head)
        if not rows.merged:
            rows.merge_into(weight)
            merged += 1
    return merged


def unmerge_lora(model: nn.Module) -> int:
    """Undo `merge_lora`; returns how many adapters were unmerged."""
    unmerged = 0
    for module in model.modules():
        if isinstance(module, Projection) and module.merged:
            module.unmerge()
            unmerged += 1
    for rows, weight in token_rows_of(model):
        if rows.merged:
            rows.unmerge_from(weight)
            unmerged += 1
    return unmerged


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (`...lora.A`, `...lora.B`, trainable token rows `...token_rows.values`), detached;
    the base is not included."""
    return {name: tensor.detach() for name, tensor in model.state_dict().items() if name.endswith(ADAPTER_SUFFIXES)}


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapter tensors saved by `lora_state_dict`; every adapter must be present."""
    expected = set(lora_state_dict(model))
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise KeyError(f"adapter state dict mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict(state, strict=False)
