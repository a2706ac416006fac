"""Where a trained model's files are, from whatever path the user gives: a model directory (as
`build --out`, `export` and a stage's `final/` write it), a stage directory, a checkpoint, or a
whole run directory. `generate`, `build --weights`, `export`, `train --init` and the plan (which
reads an `--init` model's config) all start here. Torch-free: it only looks at files.

A run directory holds one stage directory per trained stage (pretrain, sft, ...); each holds
`config.json` (the model), `checkpoints/step-N/`, `latest` (the newest checkpoint's path) and,
once finished, `final/`. A checkpoint has the weights but not the config, which it takes from
its stage directory. A run's latest model is the `final/` of its newest finished stage (the
registry's order, last first); where no stage has finished, the newest stage's latest checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .stages import STAGE_ORDER

CONFIG_FILE = "config.json"  # the model's config: HF Llama keys and the resolved model under "minimind_spec"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHECKPOINT_STATE = "state.json"  # what marks a checkpoint directory (see engine/train/checkpoint.py)
LATEST = "latest"  # a stage directory's pointer to its newest checkpoint
FINAL = "final"  # a stage directory's finished model
STAGES_NEWEST_FIRST = tuple(reversed(STAGE_ORDER))
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")  # state dicts MiniMind's trainers save (torch.save)
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what a transformers directory holds


@dataclass(frozen=True)
class ModelFiles:
    config: Path  # config.json: the resolved model (under "minimind_spec") and HF Llama keys
    weights: Path  # model.safetensors
    tokenizer_dir: Path | None  # the directory holding tokenizer.json, when the run has one

    @property
    def tokenizer_files(self) -> tuple[Path, ...]:
        """tokenizer.json and tokenizer_config.json, where the run has them (to copy alongside)."""
        if self.tokenizer_dir is None:
            return ()
        return tuple(p for p in (self.tokenizer_dir / TOKENIZER_FILE, self.tokenizer_dir / TOKENIZER_CONFIG_FILE) if p.is_file())

    def has_adapters(self) -> bool:
        """The model carries LoRA adapters (its config has a LoRA section)."""
        try:
            return json.loads(self.config.read_text())["minimind_spec"]["model"].get("lora") is not None
        except (OSError, ValueError, KeyError, AttributeError):
            return False


def latest_checkpoint(stage_dir: Path) -> Path | None:
    """The stage's newest complete checkpoint (its `latest` pointer), or None."""
    pointer = Path(stage_dir) / LATEST
    if not pointer.is_file():
        return None
    checkpoint = Path(stage_dir) / pointer.read_text().strip()
    return checkpoint if (checkpoint / WEIGHTS_FILE).is_file() and (checkpoint / CHECKPOINT_STATE).is_file() else None


def _complete(directory: Path) -> bool:
    return (directory / CONFIG_FILE).is_file() and (directory / WEIGHTS_FILE).is_file()


def _tokenizer_near(*directories: Path) -> Path | None:
    """The first of `directories` (then their stage and run directories' `final/`s) with a tokenizer."""
    candidates: list[Path] = []
    for directory in directories:
        candidates += [directory, directory / FINAL]
        candidates += [directory / stage / FINAL for stage in STAGES_NEWEST_FIRST]
    return next((c for c in candidates if (c / TOKENIZER_FILE).is_file()), None)


def _stage_model(stage_dir: Path) -> ModelFiles | None:
    """A stage directory's finished model, else its latest checkpoint (with the stage's config)."""
    if _complete(stage_dir / FINAL):
        final = stage_dir / FINAL
        return ModelFiles(final / CONFIG_FILE, final / WEIGHTS_FILE, _tokenizer_near(final, stage_dir.parent))
    checkpoint = latest_checkpoint(stage_dir)
    if checkpoint is not None and (stage_dir / CONFIG_FILE).is_file():
        return ModelFiles(stage_dir / CONFIG_FILE, checkpoint / WEIGHTS_FILE, _tokenizer_near(stage_dir.parent))
    return None


def find_model(path: Path) -> ModelFiles:
    """The model at `path` (see the module docstring for the places looked in)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if is_foreign_checkpoint(path):
        raise InputError(f"{path} is a {'MiniMind state dict (.pth)' if path.is_file() else 'transformers directory'}, "
                         "which holds no spec: give the spec it was trained with (--spec SPEC), or import it once: "
                         f"`minimind-spec import {path} --spec SPEC --out MODEL_DIR`")
    if path.is_file():
        path = path.parent  # e.g. .../model.safetensors
    if (path / CHECKPOINT_STATE).is_file() and (path / WEIGHTS_FILE).is_file():  # RUN/<stage>/checkpoints/step-N
        stage_dir = path.parent.parent
        if not (stage_dir / CONFIG_FILE).is_file():
            raise InputError(f"{path}: a checkpoint without its stage's {CONFIG_FILE} (looked in {stage_dir})")
        return ModelFiles(stage_dir / CONFIG_FILE, path / WEIGHTS_FILE, _tokenizer_near(stage_dir.parent))
    if _complete(path) and not (path / LATEST).is_file():  # a model directory (a stage's final/ included)
        return ModelFiles(path / CONFIG_FILE, path / WEIGHTS_FILE, _tokenizer_near(path, path.parent.parent))
    found = _stage_model(path)  # a stage directory
    if found is not None:
        return found
    finished = [stage for stage in STAGES_NEWEST_FIRST if _complete(path / stage / FINAL)]
    for stage in [*finished, *STAGES_NEWEST_FIRST]:  # a run: its newest finished stage, else the newest checkpoint
        found = _stage_model(path / stage)
        if found is not None:
            return found
    raise InputError(f"{path}: no trained model here (looked for {CONFIG_FILE} + {WEIGHTS_FILE} in it and in final/, "
                     "a checkpoint, and each stage's final/ or latest checkpoint)")


def is_foreign_checkpoint(path: Path) -> bool:
    """A MiniMind `.pth` (or another pickled state dict), or a transformers directory this package did not write."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in PICKLE_SUFFIXES
    config = path / CONFIG_FILE
    if not path.is_dir() or not config.is_file():
        return False
    try:
        ours = "minimind_spec" in json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return not ours and any((path / name).is_file() for name in TRANSFORMERS_WEIGHTS)
