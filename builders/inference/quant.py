"""Int8 weight-only quantisation for the decode path: per-output-channel symmetric int8
weights with one scale per row, and the matrix-vector product that reads them.

`quantize_int8(weight)` rounds each row of an (out, in) weight to int8 with the scale
max|row| / 127, rounded *up* to a bfloat16 value: the CPU kernel takes its scales in bf16, so
the scale stored is exactly the one applied, every |w / scale| stays <= 127 (no clipping), and
each element is off by at most scale / 2. Storage is one byte per weight plus six bytes per
row (the scale in fp32 and in bf16), about 0.25x of fp32.

`int8_linear(x, weight)` computes x W^T from the int8 weight. On CPU this is
`torch._weight_int8pack_mm` (an AVX-512 / AVX2 kernel that reads the int8 rows directly),
which needs bf16 activations and scales and an input width that is a multiple of 16 (other
widths take the fallback below): an fp32 input is rounded to bf16 on the way in and
the (B, out) result cast back, so an int8 product carries bf16 rounding of its input and
output on top of the int8 rounding of the weight (the weight's error is the larger one; see
the tests). The kernel with fp32 activations exists too but is a slow reference loop (about
10x slower than the fp32 matmul it replaces). Elsewhere (CUDA, MPS, fp64) the weight is
dequantised on the fly: F.linear(x, q.to(x.dtype)) * scale, correct but not a speed-up.

The model's own parameters are never touched: quantisation happens when the decode path
packs its copy of the weights (`builders.inference.decode.packed_weights(model, quant="int8")`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Quant = Literal["none", "int8"]
QUANT_CHOICES: tuple[Quant, ...] = ("none", "int8")


def check_quant(quant: str) -> Quant:
    """The quantisation name, or ValueError naming the allowed ones (it can come from a CLI flag)."""
    for choice in QUANT_CHOICES:
        if quant == choice:
            return choice
    raise ValueError(f"quant must be one of {', '.join(repr(q) for q in QUANT_CHOICES)}; got {quant!r}")


def _round_up_to_bfloat16(x: torch.Tensor) -> torch.Tensor:
    """The smallest bf16 values >= x (x fp32, positive and finite), returned as fp32."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0xFFFF) & ~0xFFFF).view(torch.float32)  # keep the top 16 bits, carrying any remainder up


@dataclass(frozen=True)
class Int8Weight:
    """An (out, in) weight as int8 rows times one scale per row: w ~ qweight * scale[:, None]."""

    qweight: torch.Tensor  # (out, in) int8
    scale: torch.Tensor  # (out,) fp32, each value exactly a bf16 number
    kernel_scale: torch.Tensor  # (out,) bf16, the same values, as the CPU kernel takes them

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scale, self.kernel_scale))

    def dequantize(self) -> torch.Tensor:
        """The weight the products apply, (out, in) fp32 (exact: 8-bit scale mantissa x 7-bit integer)."""
        return self.qweight.float() * self.scale[:, None]


@torch.no_grad()
def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    """Per-output-channel symmetric int8: |weight - dequantize| <= scale / 2 for every element."""
    # weight: (out, in), any float dtype
    w = weight.detach().double()  # float64: the division and rounding below are exact enough to keep the bound
    amax = w.abs().amax(dim=1).clamp(min=1e-30)  # (out,); an all-zero row gets a tiny scale and zeros
    scale = _round_up_to_bfloat16((amax / 127).float())  # (out,) >= amax / 127, so |w / scale| <= 127
    qweight = torch.round(w / scale.double()[:, None]).clamp_(-127, 127).to(torch.int8)  # (out, in)
    return Int8Weight(qweight=qweight.contiguous(), scale=scale, kernel_scale=scale.to(torch.bfloat16))


def _cpu_kernel_usable(x: torch.Tensor) -> bool:
    # the kernel handles `in` in blocks of 16 and reads past the row otherwise (torch 2.13 crashes
    # on in = 24 or 40 instead of raising), so other widths take the dequantising fallback
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.shape[-1] % 16 == 0
            and hasattr(torch, "_weight_int8pack_mm"))


def int8_linear(x: torch.Tensor, weight: Int8Weight) -> torch.Tensor:
    # x: (B, in) -> (B, out) in x's dtype
    if _cpu_kernel_usable(x):
        x16 = x.to(torch.bfloat16)
        if x16.stride(-1) != 1:
            x16 = x16.contiguous()
        out = torch._weight_int8pack_mm(x16, weight.qweight, weight.kernel_scale)  # (B, out) bf16
        return out.to(x.dtype)
    return F.linear(x, weight.qweight.to(x.dtype)) * weight.scale.to(x.dtype)
