"""NF4 storage of a frozen weight (QLoRA): 4-bit NormalFloat codes in blocks of 64 with
double-quantised block scales, dequantised on the fly in the forward and the backward.

Where it fits: under `techniques.quant` (scheme nf4, where base) the training run calls
`Projection.quantize_base_()` (builders/lora.py) on every decoder projection before an
adapter stage trains; the projection then keeps an `NF4Weight` instead of its fp32 weight
Parameter and computes `nf4_linear(x, weight)`; its LoRA adapter stays in the compute dtype
and is the only thing that trains. Embeddings, norms, the router and the head stay at full
precision, as QLoRA (and bitsandbytes' `Linear4bit`, which replaces only linear layers) do.

The format, from Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs" (section 3):
- the weight, flattened row-major and zero-padded to a multiple of `BLOCK_SIZE` (64), is cut
  into blocks; each block's absmax s_b is its scale, and each element w becomes the index of
  the NF4 level nearest to w / s_b (16 levels, 4 bits), two codes packed into a byte (the
  element with the even index in the high nibble);
- double quantisation: the scales s_b (one fp32 per 64 weights, 0.5 bits a weight) are
  stored in 8 bits, in groups of `SCALE_BLOCK_SIZE` (256) sharing one fp32 factor c_g:
  q_b = round(s_b / c_g) - 127 (int8), s_b ~ c_g (q_b + 127), with c_g the smallest power of
  two such that 254 c_g >= the group's largest scale. The paper subtracts the scales' mean
  and quantises symmetrically so that positive values use all 8 bits; the offset of 127 steps
  does the same, and the power-of-two factor makes the whole format idempotent: quantising a
  dequantised weight gives back the same codes, bit for bit (products of small integers and
  powers of two are exact in fp32). So a model saved with its base dequantised (a checkpoint,
  a stage's final/) is quantised again by a resume or the next stage to the very same base.
  The scale error is at most c_g / 2 <= (largest scale of the group) / 254; the tests bound it.
  (bitsandbytes uses a dynamic 8-bit float code for this second level.)
- dequantised: w ~ NF4_LEVELS[code] * c_g (q_b + 127).
Storage per weight: 4 bits + 8 / 64 bits + 32 / (64 x 256) bits, about 0.516 bytes, 0.129 of fp32.

The NF4 levels are the published table (QLoRA, appendix E; the same values as bitsandbytes'
NF4 code): quantiles of N(0, 1) normalised to [-1, 1], 8 for the positive half, 7 for the
negative, and an exact zero. `tests/builders/test_nf4.py` re-derives them from the normal
quantile function.

Why our own and not torchao's `NF4Tensor`: torchao installs against torch 2.13 (0.18.0) and works
on CPU, but it is not a dependency here, its module path moved between releases
(`torchao.dtypes.nf4tensor` -> `torchao.quantization.quantize_.workflows.nf4`), it refuses a
tensor whose scale count is not a multiple of 256 (every projection of a small model), and it
loads CUDA extensions at import. This file is ~150 lines of plain tensor code under our control.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

BLOCK_SIZE = 64  # weights per absmax scale
SCALE_BLOCK_SIZE = 256  # scales per int8 factor (the double quantisation)

# QLoRA appendix E (the NF4 data type), ascending; index = the 4-bit code.
NF4_LEVELS: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def nf4_levels(device: torch.device | str | None = None) -> torch.Tensor:
    """The 16 NF4 levels as an fp32 tensor (16,)."""
    return torch.tensor(NF4_LEVELS, dtype=torch.float32, device=device)


@dataclass(frozen=True)
class NF4Weight:
    """A (out, in) weight in NF4 with double-quantised scales (see the module docstring)."""

    codes: torch.Tensor  # (blocks * 64 / 2,) uint8: two 4-bit level indices a byte
    scale_codes: torch.Tensor  # (blocks,) int8: each block's absmax in steps of its group's factor, minus 127
    scale_factors: torch.Tensor  # (groups,) fp32: the step (a power of two) of each group of 256 scales
    shape: tuple[int, int]  # (out, in)

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors (codes, scale codes, factors)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.codes, self.scale_codes, self.scale_factors


def nf4_nbytes(numel: int) -> int:
    """Bytes `quantize_nf4` stores for a weight of `numel` elements."""
    blocks = -(-numel // BLOCK_SIZE)
    groups = -(-blocks // SCALE_BLOCK_SIZE)
    return blocks * BLOCK_SIZE // 2 + blocks + 4 * groups


def _nearest_level(normalised: torch.Tensor) -> torch.Tensor:
    """Index of the NF4 level nearest to each value in [-1, 1] (a tie goes to the lower level)."""
    levels = nf4_levels(normalised.device)
    midpoints = (levels[1:] + levels[:-1]) / 2  # (15,)
    return torch.bucketize(normalised, midpoints).to(torch.uint8)


def _pack(codes: torch.Tensor) -> torch.Tensor:
    # codes: (n,) uint8 in [0, 16), n even -> (n / 2,) uint8
    pairs = codes.view(-1, 2)
    return (pairs[:, 0] << 4) | pairs[:, 1]


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    # packed: (n / 2,) uint8 -> (n,) int64 level indices
    return torch.stack((packed >> 4, packed & 0x0F), dim=1).reshape(-1).long()


SCALE_STEPS = 254  # a group's largest scale is at most this many steps of its factor (codes -127 ... 127)


def _quantize_scales(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Double quantisation: (blocks,) fp32 scales >= 0 -> (int8 codes (blocks,), fp32 power-of-two factors (groups,))."""
    blocks = scales.numel()
    groups = -(-blocks // SCALE_BLOCK_SIZE)
    grouped = F.pad(scales, (0, groups * SCALE_BLOCK_SIZE - blocks)).view(groups, SCALE_BLOCK_SIZE)  # (G, 256)
    largest = grouped.amax(dim=1)  # (G,)
    positive = torch.where(largest > 0, largest, torch.ones_like(largest))
    factors = torch.exp2(torch.ceil(torch.log2(positive / SCALE_STEPS)))  # (G,) about the smallest power of two that fits
    factors = torch.where(SCALE_STEPS * (factors / 2) >= positive, factors / 2, factors)  # exactly the smallest: the
    factors = torch.where(SCALE_STEPS * factors < positive, factors * 2, factors)  # comparisons are exact in fp32
    steps = torch.round(grouped / factors[:, None]).clamp(0, SCALE_STEPS)  # (G, 256)
    return (steps - 127).to(torch.int8).reshape(-1)[:blocks].clone(), factors  # clone: no padding kept in storage


def dequantize_scales(scale_codes: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """The block scales the codes stand for: (blocks,) fp32."""
    per_block = factors.repeat_interleave(SCALE_BLOCK_SIZE)[:scale_codes.numel()]  # (blocks,)
    return (scale_codes.float() + 127) * per_block


@torch.no_grad()
def quantize_nf4(weight: torch.Tensor) -> NF4Weight:
    """NF4 codes and double-quantised scales of a 2-D weight (out, in), on its device."""
    if weight.dim() != 2:
        raise ValueError(f"NF4 quantises a 2-D weight; got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    flat = weight.detach().float().reshape(-1)  # (n,)
    blocks = -(-flat.numel() // BLOCK_SIZE)
    padded = F.pad(flat, (0, blocks * BLOCK_SIZE - flat.numel())).view(blocks, BLOCK_SIZE)  # (blocks, 64)
    scales = padded.abs().amax(dim=1)  # (blocks,)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = _nearest_level((padded / safe[:, None]).clamp(-1, 1)).reshape(-1)  # (blocks * 64,)
    scale_codes, factors = _quantize_scales(scales)
    return NF4Weight(_pack(codes), scale_codes, factors, (out_features, in_features))


def dequantize_nf4(weight: NF4Weight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight the codes stand for: (out, in) in `dtype`."""
    levels = nf4_levels(weight.codes.device)[_unpack(weight.codes)].view(-1, BLOCK_SIZE)  # (blocks, 64)
    scales = dequantize_scales(weight.scale_codes, weight.scale_factors)  # (blocks,)
    return (levels * scales[:, None]).reshape(-1)[:weight.numel].view(weight.shape).to(dtype)


class _NF4Linear(torch.autograd.Function):
    """y = x W^T with W dequantised in the forward and again in the backward: only the 4-bit
    codes are kept for the backward, never a dense copy of W; W itself gets no gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, codes: torch.Tensor, scale_codes: torch.Tensor, scale_factors: torch.Tensor,
                shape: tuple[int, int]) -> torch.Tensor:
        # x: (..., in) -> (..., out)
        ctx.save_for_backward(codes, scale_codes, scale_factors)
        ctx.shape = shape
        weight = dequantize_nf4(NF4Weight(codes, scale_codes, scale_factors, shape), x.dtype)  # (out, in)
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # grad_y: (..., out) -> grad_x: (..., in)
        (grad_y,) = grads
        codes, scale_codes, scale_factors = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            weight = dequantize_nf4(NF4Weight(codes, scale_codes, scale_factors, ctx.shape), grad_y.dtype)  # (out, in)
            grad_x = grad_y @ weight
        return grad_x, None, None, None, None


def nf4_linear(x: torch.Tensor, weight: NF4Weight) -> torch.Tensor:
    """x W^T for an NF4 weight, computed in x's dtype (under autocast, the autocast dtype)."""
    # x: (..., in) -> (..., out)
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    result: torch.Tensor = _NF4Linear.apply(x, *weight.tensors(), weight.shape)
    return result
