"""The gated MLP: down(act(gate(x)) * up(x)). With SiLU this is SwiGLU (MiniMind, Llama);
GELU and ReLU give GeGLU and ReGLU. Dense layers use one; MoE experts are the same module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .lora import Projection

ActivationName = Literal["SiLU", "GELU", "ReLU"]
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"SiLU": F.silu, "GELU": F.gelu, "ReLU": F.relu}


class GatedMLP(nn.Module):
    def __init__(self, *, gate_proj: Projection, up_proj: Projection, down_proj: Projection, activation: ActivationName) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj
        self.activation = activation
        self.act_fn = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (..., D) -> (..., hidden) -> (..., D)
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def build_glu(*, gate_proj: Projection, up_proj: Projection, down_proj: Projection, activation: ActivationName) -> GatedMLP:
    return GatedMLP(gate_proj=gate_proj, up_proj=up_proj, down_proj=down_proj, activation=activation)
