"""LoRA adapters on disk, in PEFT's layout, and folded into the base weights.

`write_adapter(weights, resolved, dir)` writes
- `adapter_config.json`: PEFT's LoRA config (`peft_type` LORA, `r`, `lora_alpha`,
  `lora_dropout`, `target_modules`, ...), so `peft.PeftModel.from_pretrained(base, dir)` loads it;
- `adapter_model.safetensors`: the adapter tensors under PEFT's names
  (`base_model.model.<module>.lora_A.weight` / `lora_B.weight`; ours are `<module>.lora.A` / `.B`),
  trainable token rows as PEFT's `trainable_token_indices` stores them
  (`<module>.token_adapter.trainable_tokens_delta`, the rows' values) and the modules to save
  whole (`base_model.model.<module>.weight`);
- `minimind_adapter.json`: the resolved base model the adapters were trained on (every value),
  so loading them onto another base is refused with the values that differ.
`merge_model(model, resolved)` folds every adapter into its projection and returns the dense
model and its resolved config without LoRA: what `minimind-spec lora merge` writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from builders import merge_lora
from builders.lora import ADAPTER_SUFFIXES
from builders.model import MiniMindForCausalLM

from ..config import LoRAConfig, ResolvedSpec, value_changes, weight_values
from ..errors import InputError
from .compile import compile_model

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_RECORD = "minimind_adapter.json"
PEFT_PREFIX = "base_model.model."


PEFT_ROWS = ".token_adapter.trainable_tokens_delta"  # PEFT's trainable token rows (their values, not a difference)


def to_peft_name(name: str) -> str:
    """`model.layers.0.self_attn.q_proj.lora.A` -> `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`;
    `model.embed_tokens.token_rows.values` -> `base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta`;
    any other tensor (a module to save) -> `base_model.model.<name>`."""
    if name.endswith(".token_rows.values"):
        return f"{PEFT_PREFIX}{name[:-len('.token_rows.values')]}{PEFT_ROWS}"
    if ".lora." not in name:
        return f"{PEFT_PREFIX}{name}"
    module, _, which = name.rpartition(".lora.")
    return f"{PEFT_PREFIX}{module}.lora_{which}.weight"


def from_peft_name(name: str) -> str:
    if not name.startswith(PEFT_PREFIX):
        raise InputError(f"{name!r} is not a tensor name in PEFT's layout (no {PEFT_PREFIX!r} prefix)")
    if name.endswith(PEFT_ROWS):
        return name[len(PEFT_PREFIX):-len(PEFT_ROWS)] + ".token_rows.values"
    if not name.endswith((".lora_A.weight", ".lora_B.weight")):
        return name[len(PEFT_PREFIX):]  # a module saved whole
    module, _, which = name[len(PEFT_PREFIX):-len(".weight")].rpartition(".lora_")
    return f"{module}.lora.{which}"


def saved_module_tensors(names: list[str], modules_to_save: tuple[str, ...]) -> list[str]:
    """The base tensors of the modules to save: those of a module whose name ends with an entry (PEFT's rule)."""
    return [name for name in names if not name.endswith(ADAPTER_SUFFIXES)
            and any(name.rpartition(".")[0].endswith(entry) for entry in modules_to_save)]


def base_values(resolved: ResolvedSpec) -> dict[str, object]:
    """The resolved model without its LoRA settings: what an adapter must be loaded onto."""
    return weight_values(dataclasses.replace(resolved.model, lora=None))


def peft_config(lora: LoRAConfig, tied: bool = True) -> dict[str, object]:
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank, "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout, "target_modules": sorted(lora.targets), "bias": "none", "fan_in_fan_out": False,
            "inference_mode": True, "init_lora_weights": True, "use_rslora": False, "use_dora": False,
            "modules_to_save": list(lora.modules_to_save) or None, "layers_to_transform": None,
            "base_model_name_or_path": None, "trainable_token_indices": _token_indices(lora, tied)}


def _token_indices(lora: LoRAConfig, tied: bool) -> list[int] | dict[str, list[int]] | None:
    """PEFT's trainable_token_indices: a list for the embedding (a tied head follows it), or per module when untied."""
    if not lora.trainable_tokens:
        return None
    ids = list(lora.trainable_tokens)
    return ids if tied else {"embed_tokens": ids, "lm_head": ids}


def write_adapter(weights: dict[str, torch.Tensor], resolved: ResolvedSpec, out_dir: Path) -> list[Path]:
    """The adapter tensors of a model's state dict `weights` in PEFT's layout (see the module
    docstring), written atomically."""
    lora = resolved.model.lora
    if lora is None:
        raise InputError("this model has no LoRA adapters")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        saved = [*(n for n in weights if n.endswith(ADAPTER_SUFFIXES)), *saved_module_tensors(list(weights), lora.modules_to_save)]
        tensors = {to_peft_name(name): weights[name].detach().contiguous().cpu() for name in saved}
        save_file(tensors, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(peft_config(lora, resolved.model.tie_word_embeddings), indent=2) + "\n")
        (staging / BASE_RECORD).write_text(json.dumps({"name": resolved.name, "base_model": base_values(resolved),
                                                       "lora": dataclasses.asdict(lora)}, indent=1) + "\n")
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_RECORD)]


def read_adapter(adapter_dir: Path, base: ResolvedSpec) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """The adapter's LoRA config and tensors (our names), refused unless it was trained on `base`'s model."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file() or not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise InputError(f"{adapter_dir}: no {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS} (a LoRA adapter in PEFT's layout)")
    record_path = adapter_dir / BASE_RECORD
    if record_path.is_file():
        changes = value_changes(json.loads(record_path.read_text())["base_model"], base_values(base))
        if changes:
            raise InputError(f"{adapter_dir} was trained on another base model; {len(changes)} values differ "
                             "(adapter's base -> this base):\n  " + "\n  ".join(changes[:12]))
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    indices = config.get("trainable_token_indices") or []
    lora = LoRAConfig(rank=int(config["r"]), alpha=float(config["lora_alpha"]), dropout=float(config.get("lora_dropout", 0.0)),
                      targets=tuple(config["target_modules"]),
                      trainable_tokens=tuple(indices.get("embed_tokens", []) if isinstance(indices, dict) else indices),
                      modules_to_save=tuple(config.get("modules_to_save") or ()))
    tensors = {from_peft_name(name): tensor for name, tensor in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items()}
    return lora, tensors


def with_adapter(base_model: nn.Module, base: ResolvedSpec, adapter_dir: Path) -> tuple[MiniMindForCausalLM, ResolvedSpec]:
    """The base model with the adapter of `adapter_dir` attached (a new module; the base weights copied in)."""
    lora, tensors = read_adapter(adapter_dir, base)
    resolved = dataclasses.replace(base, model=dataclasses.replace(base.model, lora=lora))
    model = compile_model(resolved, device=str(next(base_model.parameters()).device))
    state = {k: v for k, v in base_model.state_dict().items()}
    missing = model.load_state_dict({**state, **tensors}, strict=False)
    if missing.missing_keys or missing.unexpected_keys:
        raise InputError(f"{adapter_dir} does not fit the base: missing {missing.missing_keys[:4]}, "
                         f"unexpected {missing.unexpected_keys[:4]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model, resolved


def merge_model(model: nn.Module, resolved: ResolvedSpec) -> tuple[MiniMindForCausalLM, ResolvedSpec]:
    """Fold every adapter into its projection: the dense model and its resolved config (no LoRA)."""
    if resolved.model.lora is None:
        raise InputError("this model has no LoRA adapters to merge")
    merge_lora(model)
    return without_adapters(model, resolved)


def without_adapters(model: nn.Module, resolved: ResolvedSpec) -> tuple[MiniMindForCausalLM, ResolvedSpec]:
    """The model without its adapters (their effect dropped unless merged first), and its config without LoRA."""
    dense = dataclasses.replace(resolved, model=dataclasses.replace(resolved.model, lora=None))
    copy = compile_model(dense, device=str(next(model.parameters()).device))
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(ADAPTER_SUFFIXES)}
    result = copy.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    if hasattr(copy, "tie_weights"):
        copy.tie_weights()
    return copy, dense
