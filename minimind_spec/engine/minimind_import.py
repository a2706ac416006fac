"""Bring a checkpoint written by MiniMind itself into this package: `minimind-spec import`, and
`.pth` files given to `train --init`, `generate`, `export` and `build --weights` with a spec.

MiniMind's trainers save `{name: tensor}` state dicts as `.pth` (fp16 by default; bf16 or fp32
when changed), named as ours are (`model.layers.N.self_attn.q_proj.weight`,
`...mlp.experts.E.gate_proj.weight`, MiniMind-3's `self_attn.q_norm.weight`), with the tied
`lm_head.weight` stored beside the embedding; a `_resume.pth` holds that dict under "model".
Its `convert_model.py` writes a transformers directory (config.json and model.safetensors or
pytorch_model.bin, Qwen3 / Qwen3-MoE or MiniMind's own classes). Either is read into one
float32 state dict, then loaded into the spec's model through the one exact fit check
(`export.load_state_into`), and written as our model directory.

`.pth` and `.bin` files are read with `torch.load(weights_only=True)` only: tensors and plain
containers, never arbitrary objects, so a checkpoint cannot run code.
"""

from __future__ import annotations

import contextlib
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from ..config import ResolvedSpec
from ..errors import InputError
from ..model_files import CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, TRANSFORMERS_WEIGHTS, WEIGHTS_FILE, ModelFiles
from .compile import compile_model
from .export import load_state_into
from .writer import save_model_dir

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel and torch.compile wrap the names


def _load_pickled(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a state dict that loads without running code (read with torch.load(weights_only=True)): "
                         f"{first}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):  # MiniMind's _resume.pth: weights under "model"
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InputError(f"{path}: holds no state dict (a mapping of names to tensors)")
    return {str(k): v for k, v in loaded.items()}


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A MiniMind checkpoint (`.pth` file or `convert_model.py` directory) as float32 tensors under our names."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} not found")
    if path.is_dir():
        found = next((path / name for name in TRANSFORMERS_WEIGHTS if (path / name).is_file()), None)
        if found is None:
            raise InputError(f"{path}: no {' or '.join(TRANSFORMERS_WEIGHTS)} in this directory")
        if found.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(found))
        else:
            state = _load_pickled(found)
    else:
        state = _load_pickled(path)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        if key.endswith(("freqs_cos", "freqs_sin", "rotary_emb.inv_freq")):  # RoPE tables: recomputed, never learned
            continue
        out[key] = tensor.to(torch.float32) if tensor.is_floating_point() else tensor
    return out


def _tokenizer_files(directory: Path | None) -> tuple[Path, ...]:
    if directory is None:
        return ()
    if not (directory / TOKENIZER_FILE).is_file():
        raise InputError(f"--tokenizer {directory}: no {TOKENIZER_FILE} there (MiniMind keeps its tokenizer in its model/ directory)")
    return tuple(p for p in (directory / TOKENIZER_FILE, directory / TOKENIZER_CONFIG_FILE) if p.is_file())


def import_checkpoint(checkpoint: Path, resolved: ResolvedSpec, out_dir: Path, tokenizer_dir: Path | None = None) -> list[Path]:
    """Load `checkpoint` into the spec's model (exact fit, or an error naming every difference)
    and write our model directory to `out_dir`, with the tokenizer (given, or the one beside a
    converted directory). Returns the files written."""
    checkpoint = Path(checkpoint)
    state = read_checkpoint(checkpoint)
    model = compile_model(resolved, device="cpu", seed=0)
    load_state_into(model, state, str(checkpoint))
    if tokenizer_dir is None and checkpoint.is_dir() and (checkpoint / TOKENIZER_FILE).is_file():
        tokenizer_dir = checkpoint
    return save_model_dir(model, resolved, Path(out_dir), extra_files=_tokenizer_files(tokenizer_dir))


@contextlib.contextmanager
def imported_model(checkpoint: Path, resolved: ResolvedSpec, tokenizer_dir: Path | None = None) -> Iterator[ModelFiles]:
    """The files of `checkpoint` imported for `resolved` into a temporary model directory, for one command's use."""
    with tempfile.TemporaryDirectory(prefix="minimind-import-") as scratch:
        import_checkpoint(checkpoint, resolved, Path(scratch), tokenizer_dir)
        directory = Path(scratch)
        yield ModelFiles(directory / CONFIG_FILE, directory / WEIGHTS_FILE,
                         directory if (directory / TOKENIZER_FILE).is_file() else None)
