"""Checkpoints of a training stage: everything needed to continue exactly, nothing pickled.

`STAGE_DIR/checkpoints/step-00000012/` holds
- `model.safetensors`: the weights at full precision (a tied lm_head stored once, `model_io`);
- `optimizer.safetensors` + `optimizer.json`: every optimizer state tensor (moments, step
  counters) under `state.<param index>.<name>`, and the param groups (lr, betas, decay, ...);
- `rng.safetensors` + `state.json`: the torch CPU (and CUDA) generator states; Python's and
  NumPy's generator states, the step, epoch and data position, tokens seen, skipped steps, the
  GradScaler's state (fp16) and the hash of the stage's decisions.
A checkpoint is written through `model_io.staged_directory` (a temporary directory, every file
fsynced, then renamed into place), then `STAGE_DIR/latest` (a one-line text file) is replaced
atomically: a run killed at any moment leaves the previous checkpoint intact and findable. The
newest `keep` are kept.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ...errors import InputError
from ...files import write_text_atomic
from ...model_files import LATEST
from ..model_io import fsync_directory, latest_checkpoint, staged_directory, write_tensors

CHECKPOINT_DIR = "checkpoints"


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
    decisions_hash: str  # hash of the stage's plan decisions (what a resume must agree on)
    seed: int
    scaler: dict[str, float] = field(default_factory=dict)  # the fp16 GradScaler's state ({} otherwise)


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


def _random_states() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    numpy_state: Any = np.random.get_state()  # the legacy tuple (name, keys, position, has_gauss, gauss); typed as a dict
    return tensors, {"python_random": list(random.getstate()),
                     "numpy_random": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]]}


def save_checkpoint(stage_dir: Path, weights: dict[str, torch.Tensor], optimizer_state: dict[str, Any], state: TrainState,
                    keep: int = 3) -> Path:
    """Write a checkpoint of `weights` (as `model_io.model_tensors` gives them) and `optimizer_state`
    (as `Optimizer.state_dict()` gives it: parameters by index) with every RNG state and `state`.
    Under FSDP the caller gathers both on rank 0 first (`distributed.full_state`)."""
    root = stage_dir / CHECKPOINT_DIR
    final = root / f"step-{state.step:08d}"
    with staged_directory(final) as staging:
        write_tensors(weights, staging / "model.safetensors")
        tensors, meta = _optimizer_tensors(optimizer_state)
        write_tensors(tensors, staging / "optimizer.safetensors")
        (staging / "optimizer.json").write_text(json.dumps(meta, indent=2))
        rng, generators = _random_states()
        write_tensors(rng, staging / "rng.safetensors")
        (staging / "state.json").write_text(json.dumps({**asdict(state), **generators}, indent=2))
    write_text_atomic(stage_dir / LATEST, str(final.relative_to(stage_dir)) + "\n")
    fsync_directory(stage_dir)
    for old in sorted(p for p in root.iterdir() if p.name.startswith("step-"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resumable_checkpoint(stage_dir: Path, resume: bool) -> Path | None:
    """The stage's latest checkpoint, to resume from; a stage that has one is never trained over without --resume."""
    checkpoint = latest_checkpoint(stage_dir)
    if checkpoint is not None and not resume:
        raise CheckpointError(f"{stage_dir} already holds a run (at {checkpoint.name}): --resume continues it, "
                              "or choose another --out")
    return checkpoint


def read_state(checkpoint: Path) -> TrainState:
    data = json.loads((checkpoint / "state.json").read_text())
    if "decisions_hash" not in data:  # written before the plan carried the decisions
        data["decisions_hash"] = data.get("spec_hash", "")
    return TrainState(**{key: data[key] for key in TrainState.__dataclass_fields__ if key in data})


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
    cuda = [rng[k] for k in sorted((k for k in rng if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    data = json.loads((checkpoint / "state.json").read_text())
    version, internal, gauss = data["python_random"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = data["numpy_random"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    return read_state(checkpoint)
