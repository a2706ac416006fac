"""Checkpoints of a training run: everything needed to continue exactly, nothing pickled.

`RUN_DIR/checkpoints/step-00000012/` holds
- `model.safetensors`: the weights at full precision (a tied lm_head stored once);
- `optimizer.safetensors` + `optimizer.json`: every optimizer state tensor (moments, step
  counters) under `state.<param index>.<name>`, and the param groups (lr, betas, decay, ...);
- `rng.safetensors` + `state.json`: the torch CPU (and CUDA) generator states; Python's and
  NumPy's generator states, the step, epoch and data position, tokens seen, skipped steps and
  the resolved spec's hash.
A checkpoint is written into a temporary directory, every file fsynced, then renamed into
place, and `RUN_DIR/latest` (a one-line text file) is replaced atomically: a run killed at any
moment leaves the previous checkpoint intact and findable. The newest `keep` are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ...errors import InputError
from ...files import write_text_atomic
from ..export import load_weights_into

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"


class CheckpointError(InputError):
    """A checkpoint that cannot be used for this run."""


@dataclass(frozen=True)
class TrainState:
    stage: str
    step: int  # optimizer steps done
    epoch: int
    position: int  # rows of this epoch's order already consumed
    tokens_seen: int  # real (non-padding) tokens trained on
    skipped_steps: int  # steps skipped for a non-finite loss
    spec_hash: str
    seed: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON over `path`, whole or not at all."""
    write_text_atomic(path, json.dumps(data, indent=2))


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with shared tensors (a tied lm_head) stored once."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen and tensor.numel():
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor
    return out


def _optimizer_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(run_dir: Path, weights: dict[str, torch.Tensor], optimizer_state: dict[str, Any], state: TrainState,
                    keep: int = 3) -> Path:
    """Write a checkpoint of `weights` (a full state dict, tied tensors once) and `optimizer_state`
    (as `Optimizer.state_dict()` gives it: parameters by index) with every RNG state and `state`.
    Under FSDP the caller gathers both on rank 0 first (`distributed.full_state`)."""
    root = run_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{state.step:08d}"
    staging = Path(tempfile.mkdtemp(prefix=".saving.", dir=root))
    try:
        _save_tensors(weights, staging / "model.safetensors")
        tensors, meta = _optimizer_tensors(optimizer_state)
        _save_tensors(tensors, staging / "optimizer.safetensors")
        _write_json(staging / "optimizer.json", meta)
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
        _save_tensors(rng, staging / "rng.safetensors")
        numpy_state = np.random.get_state()
        _write_json(staging / "state.json", {
            **asdict(state), "python_random": list(random.getstate()),
            "numpy_random": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        })
        _fsync_dir(staging)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    pointer = run_dir / f".{LATEST}.tmp"
    pointer.write_text(str(final.relative_to(run_dir)) + "\n")
    os.replace(pointer, run_dir / LATEST)
    _fsync_dir(run_dir)
    for old in sorted(p for p in root.iterdir() if p.name.startswith("step-"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / LATEST
    if not pointer.is_file():
        return None
    path = run_dir / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def read_state(checkpoint: Path) -> TrainState:
    data = json.loads((checkpoint / "state.json").read_text())
    return TrainState(**{key: data[key] for key in TrainState.__dataclass_fields__})


def load_weights(model: nn.Module, checkpoint: Path) -> None:
    """Load a checkpoint's (or a model directory's) model.safetensors into `model`, strictly."""
    load_weights_into(model, checkpoint / "model.safetensors")


def read_optimizer_state(checkpoint: Path) -> dict[str, Any]:
    """The optimizer state saved in `checkpoint`, as `Optimizer.load_state_dict` takes it."""
    meta = json.loads((checkpoint / "optimizer.json").read_text())
    tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{**g, **({"betas": tuple(g["betas"])} if "betas" in g else {})} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def restore_random_state(checkpoint: Path) -> TrainState:
    """Set every RNG (torch, CUDA, Python, NumPy) as `checkpoint` saved it; returns its run position."""
    rng = load_file(str(checkpoint / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    data = json.loads((checkpoint / "state.json").read_text())
    version, internal, gauss = data["python_random"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = data["numpy_random"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    return read_state(checkpoint)
