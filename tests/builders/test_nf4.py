"""NF4 (builders/nf4.py) and the NF4 form of a Projection (builders/lora.py), against references
written here: the levels re-derived from the normal quantile function, a per-element
nearest-level quantiser with its own double quantisation, and the error bound computed from the
level table."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
import torch.nn.functional as F

from builders.lora import LoRAAdapter, Projection
from builders.nf4 import BLOCK_SIZE, NF4_LEVELS, SCALE_BLOCK_SIZE, dequantize_nf4, nf4_linear, nf4_nbytes, quantize_nf4
from minimind_spec.plan.estimates import nf4_bytes

SHAPES = [(96, 128), (5, 7), (320, 192)]  # one full block multiple, one smaller than a block, one past 256 blocks
LEVELS = torch.tensor(NF4_LEVELS)
MAX_GAP = float((LEVELS[1:] - LEVELS[:-1]).max())


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _weight(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    weight = torch.randn(shape, generator=generator) * 0.02
    weight.view(-1)[::97] *= 8  # outliers: blocks with very different scales
    return weight


def _blocks(weight: torch.Tensor) -> torch.Tensor:
    flat = weight.reshape(-1)
    blocks = math.ceil(flat.numel() / BLOCK_SIZE)
    return F.pad(flat, (0, blocks * BLOCK_SIZE - flat.numel())).view(blocks, BLOCK_SIZE)  # (blocks, 64)


def _reference_scales(scales: torch.Tensor) -> torch.Tensor:
    """Double quantisation by hand: per group of 256, the smallest power of two c with 254 c >= the group's
    largest scale, each scale rounded to a multiple of c."""
    out = []
    for start in range(0, scales.numel(), SCALE_BLOCK_SIZE):
        group = scales[start:start + SCALE_BLOCK_SIZE].tolist()
        largest = max(group)
        step = 1.0
        if largest > 0:
            step = 2.0 ** math.ceil(math.log2(largest / 254))
            while 254 * step / 2 >= largest:
                step /= 2
            while 254 * step < largest:
                step *= 2
        out += [round(s / step) * step for s in group]
    return torch.tensor(out, dtype=torch.float32)


def _reference(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(level index of each element, dequantised weight): the nearest level by argmin over all 16."""
    blocks = _blocks(weight.float())
    scales = blocks.abs().amax(dim=1)
    normalised = blocks / torch.where(scales > 0, scales, torch.ones_like(scales))[:, None]
    codes = (normalised[..., None] - LEVELS).abs().argmin(dim=-1)  # (blocks, 64)
    dequantised = LEVELS[codes] * _reference_scales(scales)[:, None]
    return codes.reshape(-1)[:weight.numel()], dequantised.reshape(-1)[:weight.numel()].view(weight.shape)


def _codes(weight: torch.Tensor) -> torch.Tensor:
    packed = quantize_nf4(weight).codes
    return torch.stack((packed >> 4, packed & 0x0F), dim=1).reshape(-1)[:weight.numel()].long()


def test_the_levels_are_the_normal_quantiles_of_the_qlora_paper() -> None:
    normal, offset = NormalDist(), 0.9677083  # QLoRA appendix E: the quantiles of N(0, 1) up to this probability
    positive = [normal.inv_cdf(offset + (0.5 - offset) * i / 8) for i in range(8)]
    negative = [-normal.inv_cdf(offset + (0.5 - offset) * i / 7) for i in range(7)]
    values = sorted(positive + [0.0] + negative)
    derived = [v / max(abs(x) for x in values) for v in values]
    assert len(NF4_LEVELS) == 16 and NF4_LEVELS == tuple(sorted(NF4_LEVELS)) and NF4_LEVELS[7] == 0.0
    assert max(abs(a - b) for a, b in zip(derived, NF4_LEVELS)) < 1e-6


@pytest.mark.parametrize("shape", SHAPES)
def test_the_error_is_within_the_nf4_bound(shape: tuple[int, int], generator: torch.Generator) -> None:
    weight = _weight(shape, generator)
    error = (dequantize_nf4(quantize_nf4(weight)) - weight).abs().view(-1)
    blocks = _blocks(weight)
    scales = blocks.abs().amax(dim=1)  # (blocks,)
    groups = F.pad(scales, (0, -scales.numel() % SCALE_BLOCK_SIZE)).view(-1, SCALE_BLOCK_SIZE).amax(dim=1)
    # rounding to the nearest level: half the widest gap times the block's scale; the scale's own 8-bit
    # rounding: half its step, at most the group's largest scale / 254 (times |level| <= 1)
    bound = scales[:, None] * MAX_GAP / 2 + groups.repeat_interleave(SCALE_BLOCK_SIZE)[:scales.numel(), None] / 254
    bound = bound.expand(-1, BLOCK_SIZE).reshape(-1)[:weight.numel()]
    assert bool((error <= bound * (1 + 1e-5) + 1e-9).all())


@pytest.mark.parametrize("shape", SHAPES)
def test_codes_and_values_equal_a_per_element_reference(shape: tuple[int, int], generator: torch.Generator) -> None:
    weight = _weight(shape, generator)
    codes, dequantised = _reference(weight)
    ours = _codes(weight)
    assert int(ours.max()) < 16
    assert torch.equal(ours, codes)
    torch.testing.assert_close(dequantize_nf4(quantize_nf4(weight)), dequantised, rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_packed_weight_takes_under_0_3_of_fp32(shape: tuple[int, int], generator: torch.Generator) -> None:
    weight = _weight(shape, generator)
    nf4 = quantize_nf4(weight)
    stored = sum(t.untyped_storage().nbytes() for t in nf4.tensors())  # what the tensors really occupy
    assert nf4.codes.dtype == torch.uint8 and nf4.codes.numel() == math.ceil(weight.numel() / BLOCK_SIZE) * BLOCK_SIZE // 2
    assert stored == nf4.nbytes == nf4_nbytes(weight.numel()) == nf4_bytes(weight.numel())  # the plan's formula agrees
    if weight.numel() >= 1024:
        assert stored <= 0.3 * weight.numel() * 4
        assert stored / (weight.numel() * 4) == pytest.approx(0.129, abs=0.002)


def test_quantising_a_dequantised_weight_gives_the_same_codes(generator: torch.Generator) -> None:
    nf4 = quantize_nf4(_weight((320, 192), generator))
    again = quantize_nf4(dequantize_nf4(nf4))
    assert all(torch.equal(a, b) for a, b in zip(nf4.tensors(), again.tensors()))


def test_nf4_linear_matches_the_dense_product_and_its_input_gradient(generator: torch.Generator) -> None:
    nf4 = quantize_nf4(_weight((96, 128), generator))
    dense = dequantize_nf4(nf4)
    x = torch.randn(2, 5, 128, generator=generator, requires_grad=True)
    x_dense = x.detach().clone().requires_grad_(True)
    grad = torch.randn(2, 5, 96, generator=generator)
    nf4_linear(x, nf4).backward(grad)
    F.linear(x_dense, dense).backward(grad)
    torch.testing.assert_close(nf4_linear(x, nf4), F.linear(x, dense))
    assert x.grad is not None and x_dense.grad is not None
    torch.testing.assert_close(x.grad, x_dense.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert nf4_linear(x, nf4).dtype == torch.bfloat16


def _projection(generator: torch.Generator) -> Projection:
    projection = Projection(128, 96, LoRAAdapter(128, 96, rank=4, alpha=8.0, dropout=0.0))
    with torch.no_grad():
        projection.weight.copy_(_weight((96, 128), generator))
        projection.lora.A.normal_(0, 0.02, generator=generator)
        projection.lora.B.normal_(0, 0.02, generator=generator)
    return projection


def test_a_quantised_projection_trains_its_adapter_only_and_saves_its_base_dequantised(generator: torch.Generator) -> None:
    projection = _projection(generator)
    expected = dequantize_nf4(quantize_nf4(projection.weight.detach()))
    projection.quantize_base_()
    assert [name for name, _ in projection.named_parameters()] == ["lora.A", "lora.B"]
    assert torch.equal(projection.state_dict()["weight"], expected) and torch.equal(projection.dense_weight(), expected)
    x = torch.randn(3, 128, generator=generator)
    lora = projection.lora
    torch.testing.assert_close(projection(x), F.linear(x, expected) + lora(x))
    projection(x).sum().backward()
    assert lora.A.grad is not None and lora.B.grad is not None

    fresh = Projection(128, 96, LoRAAdapter(128, 96, rank=4, alpha=8.0, dropout=0.0))
    fresh.quantize_base_()
    fresh.load_state_dict(projection.state_dict())  # a checkpoint of the quantised model, loaded into another
    assert all(torch.equal(getattr(fresh, n), getattr(projection, n)) for n in Projection._NF4_BUFFERS)


def test_merge_dequantises_the_base_then_folds_the_update(generator: torch.Generator) -> None:
    projection = _projection(generator)
    projection.quantize_base_()
    base, delta = projection.dense_weight(), projection.lora.delta_weight().detach()
    x = torch.randn(3, 128, generator=generator)
    before = projection(x).detach()
    projection.merge()
    assert not projection.quantized and torch.equal(projection.weight, base + delta)
    torch.testing.assert_close(projection(x), before)
    projection.unmerge()
    torch.testing.assert_close(projection.weight, base)
