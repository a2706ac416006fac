"""Model state in and out of files: the one place that knows how weights are stored.

- `model_tensors`: a model's state as stored, shared tensors (a tied `lm_head`) once;
- `with_tied_head`: the other way, a stored state completed with the tied head, for loading;
- `write_tensors`: a safetensors file, flushed to disk;
- `staged_directory`: write a directory's files into a temporary directory beside it, flushed,
  then rename it into place (replacing the old one), so a crash leaves the old directory or
  the new one, never half of it;
- `latest_checkpoint` (from `model_files`, torch-free, where the plan uses it too).
Training checkpoints (`train/checkpoint.py`), a stage's `final/` (`train/run.py`) and
`save_pretrained` / `build --out` (`writer.py`) all write through these.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from ..model_files import latest_checkpoint

TIED_HEAD = "lm_head.weight"
EMBEDDING = "model.embed_tokens.weight"

__all__ = ["TIED_HEAD", "fsync_directory", "latest_checkpoint", "model_tensors", "staged_directory", "with_tied_head",
           "write_tensors"]


def is_tied(model: nn.Module) -> bool:
    return bool(getattr(model, "tie_word_embeddings", False))


def model_tensors(model: nn.Module, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The model's state dict (or `state`, e.g. gathered from shards) as stored: a tied lm_head once, as the embedding."""
    state = dict(model.state_dict() if state is None else state)
    if is_tied(model):
        state.pop(TIED_HEAD, None)
    return state


def with_tied_head(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A stored state completed for `load_state_dict`: the tied lm_head is the embedding."""
    state = dict(state)
    if is_tied(model) and TIED_HEAD not in state and EMBEDDING in state:
        state[TIED_HEAD] = state[EMBEDDING]
    return state


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Path) -> None:
    _fsync_file(path)


def write_tensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """A safetensors file of `tensors` (moved to the CPU, contiguous), flushed to disk. A failed write (a full
    disk, a file-size limit) raises OSError, as every other file write does."""
    try:
        save_file({name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}, str(path),
                  metadata=metadata)
    except SafetensorError as error:  # safetensors reports I/O failures as its own exception
        raise OSError(errno.EIO, str(error).removeprefix("Error while serializing: "), str(path)) from error
    _fsync_file(path)


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; when the block ends without an error its
    files are flushed and it replaces `target`. On an error it is removed and `target` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        for path in staging.rglob("*"):
            if path.is_file():
                _fsync_file(path)
        fsync_directory(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        fsync_directory(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
