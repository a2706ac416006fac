"""A stage's precision, as the plan decided it, made real: the autocast context, and for fp16 a
GradScaler around the backward pass and the optimizer step.

- fp32: no autocast, plain backward and step;
- bf16: `torch.autocast(dtype=bfloat16)` around each forward (fp32 master weights and state);
- fp16: `torch.autocast(dtype=float16)` and a `torch.amp.GradScaler`: the loss is scaled before
  backward, the gradients unscaled before clipping, and a step whose gradients overflowed is
  skipped while the scale backs off. The scaler's state is saved in checkpoints.
`executed()` reads the live objects back into a `Precision`: what the stage really ran in.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from ...plan import Precision

AUTOCAST_DTYPES = {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


class PrecisionRuntime:
    def __init__(self, precision: Precision, device: str) -> None:
        self.precision = precision
        self.device_type = torch.device(device).type
        self.dtype = AUTOCAST_DTYPES.get(precision)  # None: fp32
        self.scaler = torch.amp.GradScaler(self.device_type) if precision == Precision.FP16 else None

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # skipped when the gradients overflowed
        self.scaler.update()

    def state(self) -> dict[str, float]:
        if self.scaler is None:
            return {}
        state = self.scaler.state_dict()
        return {"scale": float(state["scale"]), "growth_tracker": float(state["_growth_tracker"])}

    def load_state(self, state: dict[str, float]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict({**self.scaler.state_dict(), "scale": state["scale"],
                                         "_growth_tracker": int(state["growth_tracker"])})

    def executed(self) -> Precision:
        """The precision the live objects compute in (the autocast dtype a forward sees, a scaler or none)."""
        with self.autocast():
            dtype = torch.get_autocast_dtype(self.device_type) if torch.is_autocast_enabled(self.device_type) else None
        if dtype is None:
            return Precision.FP32
        if dtype == torch.float16 and self.scaler is not None and self.scaler.is_enabled():
            return Precision.FP16
        return Precision.BF16 if dtype == torch.bfloat16 else Precision.FP32
