"""Write a compiled model to disk and read it back: `model.safetensors` (seeded initial
weights, Hugging Face Llama names) and `config.json`.

config.json holds the keys a Hugging Face Llama config has (hidden_size, num_attention_heads,
rope_theta, rope_scaling, ...) so dense RoPE/RMSNorm/SiLU builds load in transformers as
`LlamaForCausalLM`; our own fields (MoE, LoRA, norm kind, the whole resolved ModelConfig)
sit under "minimind_spec", which `load_model_files` uses to rebuild the exact same module
tree. Weights are safetensors only: nothing here unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..config import LoRAConfig, ModelConfig, MoEConfig, ResolvedSpec, RopeConfig, value_changes, weight_values
from ..errors import InputError, Problem, SpecError
from .compile import INIT_STD, compile_model
from .hf_layout import QWEN2_MOE, from_hf, hf_architecture, hf_mismatches, in_hf_layout, qwen2_moe_keys, to_hf

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 2  # 2: ModelConfig without label_smoothing and static_kv_cache (version 1 files still load)
REMOVED_IN_VERSION_2 = ("label_smoothing", "static_kv_cache")


def _hf_rope(c: ModelConfig) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) in Hugging Face terms. Static NTK has no HF type (their
    'dynamic' rescales at run time), but it is exactly a larger theta, so it is written so."""
    rs = c.rope_scaling
    if rs.kind == "none":
        return c.rope_theta, None
    if rs.kind == "ntk":
        return c.rope_theta * rs.factor ** (c.head_dim / (c.head_dim - 2)), None
    if rs.kind == "linear":
        return c.rope_theta, {"rope_type": "linear", "factor": rs.factor}
    return c.rope_theta, {"rope_type": "yarn", "factor": rs.factor, "beta_fast": rs.beta_fast, "beta_slow": rs.beta_slow,
                          "original_max_position_embeddings": rs.original_max_position_embeddings,
                          "attention_factor": rs.attention_factor}


def model_config_dict(resolved: ResolvedSpec, hf_layout: bool = False) -> dict[str, Any]:
    """The config.json contents for `resolved`: Llama's keys for a dense model Llama computes
    exactly; with `hf_layout` (the weights written by `hf_layout.to_hf`), Qwen2-MoE's for MoE."""
    c = resolved.model
    architecture = hf_architecture(c)
    llama_compatible = architecture == "llama"
    theta, scaling = _hf_rope(c)
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM" if llama_compatible else "MiniMindForCausalLM"],
        "model_type": "llama" if llama_compatible else "minimind",
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": {"SiLU": "silu", "GELU": "gelu", "ReLU": "relu"}[c.activation],
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": theta,
        "rope_scaling": scaling,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": c.dropout,
        "initializer_range": INIT_STD,
        "torch_dtype": "float32",
        "minimind_spec": {
            "format_version": FORMAT_VERSION,
            "name": resolved.name,
            "variant": resolved.variant,
            "model": dataclasses.asdict(c),
        },
    }
    if hf_layout and architecture == QWEN2_MOE:
        config |= qwen2_moe_keys(c)
    return config


def _require_device(device: str) -> None:
    """Refuse a device this machine does not have, before any work is done."""
    kind = device.split(":")[0]
    available = {"cpu": True, "meta": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(kind, False):
        raise SpecError(Problem("", f"device {device!r} is not available on this machine",
                                "use --device cpu, or meta to write the config only"))


def check_weights_fit(resolved: ResolvedSpec, config_path: Path) -> None:
    """Refuse weights trained for another model: the resolved model in `config_path` (beside the
    weights) must equal `resolved.model`, value by value (compute-only settings, dtype and the
    attention backend, aside); the error lists what differs."""
    changes = value_changes(weight_values(read_model_config(config_path).model), weight_values(resolved.model))
    if changes:
        shown = "\n  ".join(changes[:12]) + (f"\n  ... and {len(changes) - 12} more" if len(changes) > 12 else "")
        raise InputError(f"the weights beside {config_path} are for another model; {len(changes)} values differ "
                         f"(theirs -> this spec's):\n  {shown}")


def write_model_files(resolved: ResolvedSpec, out_dir: Path, device: str = "cpu", seed: int = 0,
                      weights: Path | None = None, extra_files: tuple[Path, ...] = ()) -> list[Path]:
    """Write config.json and, unless `device` is "meta", model.safetensors: the seeded initial
    weights, or `weights` (a trained model.safetensors, whose config the caller has checked with
    `check_weights_fit`). `extra_files` (a tokenizer) are copied alongside. Returns the paths
    written: on the meta device there are no weights to save, so the list holds config.json
    only (callers say so to the user)."""
    _require_device(device)
    model = compile_model(resolved, device=device, seed=seed)
    if weights is not None and torch.device(device).type != "meta":
        load_weights_into(model, weights)
    return save_model_dir(model, resolved, out_dir, seed=None if weights is not None else seed, extra_files=extra_files)


def save_model_dir(model: torch.nn.Module, resolved: ResolvedSpec, out_dir: Path, seed: int | None = None,
                   extra_files: tuple[Path, ...] = (), hf_layout: bool = False) -> list[Path]:
    """Write `model` (built from `resolved`) as a model directory: config.json, model.safetensors
    (a tied lm_head once; none on the meta device) and `extra_files`. Every file is written into
    a temporary directory inside `out_dir` and then renamed into place, weights first and
    config.json last, so no file is ever half-written and an error before the renames leaves
    the directory as it was (a crash between renames can leave new weights beside an old config)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    on_meta = next(model.parameters()).device.type == "meta"
    config = model_config_dict(resolved, hf_layout)
    config["minimind_spec"]["seed"] = seed
    config["minimind_spec"]["weights"] = None if on_meta else WEIGHTS_FILE
    staging = Path(tempfile.mkdtemp(prefix=".writing.", dir=out_dir))
    try:
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        names = [CONFIG_FILE]
        if not on_meta:
            state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
            if resolved.model.tie_word_embeddings:
                state.pop("lm_head.weight")  # shared with model.embed_tokens.weight
            if hf_layout:
                state = to_hf(state, resolved.model)
            save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt", "name": resolved.name})
            names.append(WEIGHTS_FILE)
        for extra in extra_files:
            shutil.copy(extra, staging / extra.name)
            names.append(extra.name)
        for name in [*names[1:], names[0]]:  # config.json last: it names the weights beside it
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in names]


def _model_config(data: dict[str, Any], version: int, source: Path) -> ModelConfig:
    if version > FORMAT_VERSION:
        raise SpecError(Problem("", f"{source} was written by a newer minimind-spec (format {version}; this one reads "
                                    f"up to {FORMAT_VERSION})", "upgrade minimind-spec"))
    fields = dict(data)
    if version < 2:
        for key in REMOVED_IN_VERSION_2:
            fields.pop(key, None)
    unknown = set(fields) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise SpecError(Problem("", f"{source}: unknown model fields {sorted(unknown)} for format {version}"))
    fields["rope_scaling"] = RopeConfig(**fields["rope_scaling"])
    fields["moe"] = MoEConfig(**fields["moe"]) if fields["moe"] is not None else None
    if fields["lora"] is not None:
        fields["lora"] = LoRAConfig(**{**fields["lora"], "targets": tuple(fields["lora"]["targets"])})
    return ModelConfig(**fields)


def read_model_config(config_path: Path) -> ResolvedSpec:
    """The resolved model a `config.json` written by this package describes (training not included)."""
    config_path = Path(config_path)
    try:
        ours = json.loads(config_path.read_text())["minimind_spec"]
    except (OSError, ValueError, KeyError) as exc:
        raise SpecError(Problem("", f"{config_path}: not a model config written by minimind-spec ({exc})")) from exc
    return ResolvedSpec(name=ours["name"], variant=ours["variant"], spec=None, training=None,
                        model=_model_config(ours["model"], ours.get("format_version", 1), config_path))


def load_weights_into(model: torch.nn.Module, weights: Path, fresh_adapters: bool = False) -> None:
    """Load `weights` (safetensors; a tied lm_head may be absent) into `model`, strictly; with
    `fresh_adapters`, LoRA tensors absent from a base without LoRA keep their initial values.
    Untrained adapters (B = 0) that `model` lacks are dropped: they change no output."""
    from safetensors.torch import load_file

    weights = Path(weights)
    if not weights.is_file():
        raise InputError(f"{weights} not found (was the model built with --device meta?)")
    device = next(model.parameters()).device
    state = load_file(str(weights), device=str(device))
    expected = set(model.state_dict())
    if in_hf_layout(state):  # an export in Qwen2-MoE's layout: back to ours
        state = from_hf(state, expected)
    extra = [k for k in state if k not in expected and k.endswith((".lora.A", ".lora.B"))]
    if extra:  # adapters this model does not have: dropped only when they change nothing (B = 0)
        live = [k for k in extra if k.endswith(".lora.B") and bool(state[k].any())]
        if live:
            raise InputError(f"{weights} holds trained LoRA adapters ({live[0]}, ...) that this model has no place for: "
                             "`minimind-spec lora merge` folds them into the base first")
        state = {k: v for k, v in state.items() if k not in extra}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that do not fit
        raise InputError(f"{weights} does not fit this model: {str(exc).splitlines()[-1].strip()}") from exc
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and getattr(model, "tie_word_embeddings", False))
               and not (fresh_adapters and k.endswith((".lora.A", ".lora.B")))]
    if missing or result.unexpected_keys:
        raise InputError(f"{weights} does not fit this model: missing {missing[:4]}, unexpected {result.unexpected_keys[:4]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def load_model(config_path: Path, weights: Path, device: str = "cpu") -> torch.nn.Module:
    """Rebuild the model `config_path` describes and load `weights` into it."""
    model = compile_model(read_model_config(config_path), device=device)
    load_weights_into(model, weights)
    return model


def load_model_files(out_dir: Path, device: str = "cpu") -> torch.nn.Module:
    """Rebuild the model written by `write_model_files` (or a stage's final/) and load its weights."""
    out_dir = Path(out_dir)
    return load_model(out_dir / CONFIG_FILE, out_dir / WEIGHTS_FILE, device)


LORA_EXPORTS = ("merged", "base", "adapter")


def export_model(config_path: Path, weights: Path, out_dir: Path, lora: str = "merged",
                 extra_files: tuple[Path, ...] = ()) -> list[Path]:
    """Write a trained model as a model directory that loads without this package: as
    `LlamaForCausalLM` (dense) or `Qwen2MoeForCausalLM` (MoE), the architectures that compute it
    exactly (anything else is refused, naming the mismatch; see `hf_layout`). A model with LoRA
    adapters is written `merged` (adapters folded into the weights), as its `base` (adapters
    dropped) or as the `adapter` alone in PEFT's layout; LoRA tensors never go into a base model."""
    from .lora_io import merge_model, without_adapters, write_adapter

    if lora not in LORA_EXPORTS:
        raise InputError(f"--lora {lora!r}: one of {', '.join(LORA_EXPORTS)}")
    resolved = read_model_config(config_path)
    model = load_model(config_path, weights)
    if resolved.model.lora is not None and lora == "adapter":
        return write_adapter(model.state_dict(), resolved, Path(out_dir))
    if resolved.model.lora is None and lora == "adapter":
        raise InputError(f"{weights}: this model has no LoRA adapters to export")
    mismatches = hf_mismatches(resolved.model)
    if mismatches:
        raise InputError("no Hugging Face architecture computes this model exactly: " + "; ".join(mismatches)
                         + ". `build SPEC --weights RUN --out DIR` writes it in minimind-spec's own layout")
    if resolved.model.lora is not None:
        model, resolved = merge_model(model, resolved) if lora == "merged" else without_adapters(model, resolved)
    return save_model_dir(model, resolved, out_dir, extra_files=extra_files, hf_layout=True)
