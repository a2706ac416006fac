"""One frozen linear layer of the decode path (`PackedLinear`), stored for the fastest
matrix-vector kernel at hand, and the per-process choice between CPU kernels.

A batch-1 decode step is a chain of (1, in) x (in, out) products whose weights are read once
each; which kernel streams them fastest depends on the CPU, so on CPU the two candidates (MKL
through `torch.mm` on the transposed weight, oneDNN's prepacked linear) are timed on each
weight shape the first time it is packed in a process, and the faster one is kept. With
`quant="int8"` the weight is stored as per-row int8 (`builders.inference.quant`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from .quant import Int8Weight, Quant, check_quant, int8_linear, quantize_int8

Kernel = Literal["auto", "mm", "onednn", "linear"]
_FASTEST: dict[tuple[int, int, torch.dtype], str] = {}  # (out, in, dtype) -> the kernel measured fastest in this process


def _onednn_usable(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _onednn_pack(weight: torch.Tensor) -> torch.Tensor | None:
    """The weight reordered for oneDNN's linear, or None where this build cannot run it."""
    if not _onednn_usable(weight):
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        torch.ops.mkldnn._linear_pointwise.default(torch.zeros(1, weight.shape[1], dtype=weight.dtype), packed,
                                                   None, "none", [], "")
        return packed
    except (RuntimeError, AttributeError):  # an old or unusual build: use the next best kernel
        return None


def _seconds(run: Callable[[], object]) -> float:
    """Median wall time of one call (2 warm-ups, then 7 timed groups of 4 calls)."""
    for _ in range(2):
        run()
    times = []
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(4):
            run()
        times.append(time.perf_counter() - started)
    return sorted(times)[3] / 4


def _fastest_cpu_kernel(weight: torch.Tensor, transposed: torch.Tensor, onednn: torch.Tensor) -> str:
    """'mm' or 'onednn', whichever ran this (out, in) shape faster at batch 1, once per process.

    The winner depends on the CPU: oneDNN's prepacked linear streamed 17-24 GB/s against
    F.linear's 10 GB/s on an AMD EPYC VM, while on an Intel Xeon (Emerald Rapids) VM MKL's
    matrix-vector product through `torch.mm` is the faster one (37-42 against 29 GB/s, fp32).
    """
    key = (weight.shape[0], weight.shape[1], weight.dtype)
    if key not in _FASTEST:
        x = torch.randn(1, weight.shape[1], dtype=weight.dtype)
        op = torch.ops.mkldnn._linear_pointwise.default
        mm = _seconds(lambda: torch.mm(x, transposed))
        dnn = _seconds(lambda: op(x, onednn, None, "none", [], ""))
        _FASTEST[key] = "mm" if mm <= dnn else "onednn"
    return _FASTEST[key]


class PackedLinear:
    """A frozen bias-free linear y = x W^T, stored for the fastest matrix-vector kernel at hand.

    `quant="int8"`: per-row int8 weights (`builders.inference.quant`). Otherwise, with
    `kernel="auto"`, on CPU whichever of MKL's `torch.mm` on the transposed (in, out) weight and
    oneDNN's prepacked linear measured faster for this shape (`_fastest_cpu_kernel`), on other
    devices `F.linear` on the (out, in) weight. `kernel="mm"` is the layout `torch.compile`
    can trace (oneDNN's packed weights are opaque to it).
    """

    def __init__(self, weight: torch.Tensor, quant: Quant = "none", kernel: Kernel = "auto") -> None:
        # weight: (out, in)
        self.out_features, self.in_features = weight.shape
        weight = weight.detach().contiguous()
        self.int8: Int8Weight | None = None
        self.kind = "linear"
        self.weight = weight
        if check_quant(quant) == "int8":
            self.int8 = quantize_int8(weight)
            self.kind, self.weight = "int8", self.int8.qweight
            return
        if weight.device.type != "cpu" or kernel == "linear":
            return
        onednn = _onednn_pack(weight) if kernel in ("auto", "onednn") else None
        transposed = weight.t().contiguous()  # (in, out)
        if onednn is not None and (kernel == "onednn" or _fastest_cpu_kernel(weight, transposed, onednn) == "onednn"):
            self.kind, self.weight = "onednn", onednn
        else:
            self.kind, self.weight = "mm", transposed

    @property
    def nbytes(self) -> int:
        """Bytes of the stored weight (int8: the int8 rows and their scales)."""
        if self.int8 is not None:
            return self.int8.nbytes
        return self.out_features * self.in_features * self.weight.element_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, in) -> (B, out)
        if self.kind == "mm":
            return torch.mm(x, self.weight)
        if self.kind == "onednn":
            return torch.ops.mkldnn._linear_pointwise.default(x, self.weight, None, "none", [], "")
        if self.int8 is not None:
            return int8_linear(x, self.int8)
        return F.linear(x, self.weight)

    def add(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # residual: (B, out), x: (B, in) -> residual + x W^T, one kernel for the mm layout
        if self.kind == "mm":
            return torch.addmm(residual, x, self.weight)
        return residual + self(x)
