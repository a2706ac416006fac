"""The device a run trains on: `auto` picked (cuda > mps > cpu) and what it supports, for the plan's
precision decision (`plan.decide_precision`)."""

from __future__ import annotations

import torch

from ...errors import InputError
from ...plan import DeviceFacts


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device_facts(device: str) -> DeviceFacts:
    """The picked device's kind, name and bf16 support."""
    picked = pick_device(device)
    kind = picked.split(":")[0]
    if kind == "cuda" and torch.cuda.is_available():
        return DeviceFacts("cuda", torch.cuda.get_device_name(), bool(torch.cuda.is_bf16_supported()))
    if kind == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return DeviceFacts("mps", "Apple GPU", True)
    if kind == "cpu":
        return DeviceFacts("cpu", "CPU", True)
    raise InputError(f"--device {device}: no such device on this machine (auto picks cuda, then mps, then cpu)")
