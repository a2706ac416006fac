"""Model directories in and out: `write_model_files` (a spec's seeded or trained weights),
`read_model_config` / `load_weights_into` / `load_model` / `from_pretrained` (rebuild a model from its directory,
in our layout or the Hugging Face one), `check_weights_fit`, and `export_model` (a trained
model as the Hugging Face architecture that computes it exactly). The file format itself is
`writer`'s; weights are safetensors only: nothing here unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from builders.lora import ADAPTER_SUFFIXES
from builders.model import MiniMindForCausalLM
from builders.token_rows import reset_token_rows

from ..config import LoRAConfig, ModelConfig, MoEConfig, ResolvedSpec, RopeConfig, value_changes, weight_values
from ..errors import InputError, Problem, SpecError
from .compile import compile_model
from ..model_files import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, find_model
from .data.tokenizer import load_tokenizer
from .hf_layout import from_hf, hf_mismatches, in_hf_layout
from .model_io import with_tied_head
from .weights_fit import fit_report
from .writer import FORMAT_VERSION, save_model_dir

REMOVED_IN_VERSION_2 = ("label_smoothing", "static_kv_cache")


def require_device(device: str) -> None:
    """Refuse a device this machine does not have, before any work is done."""
    kind = device.split(":")[0]
    available = {"cpu": True, "meta": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(kind, False):
        raise SpecError(Problem("", f"device {device!r} is not available on this machine",
                                "use --device cpu, or meta to write the config only"))


def free_memory(device: str) -> int | None:
    """Bytes that can still be allocated on `device` (None where it cannot be told)."""
    kind = device.split(":")[0]
    if kind == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    if kind == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def _require_memory(resolved: ResolvedSpec, device: str) -> None:
    """Refuse to materialise weights that cannot fit: the fp32 weights (the build allocates and
    writes them at full precision) against the device's free memory, both numbers in the error."""
    if device.split(":")[0] == "meta":
        return
    from ..graph import build_graph, graph_costs

    # the fp32 weights, plus about one more copy while safetensors serialises them (or while loaded weights are copied in)
    needed = 2 * 4 * graph_costs(build_graph(resolved), resolved.model).total_params
    free = free_memory(device)
    if free is not None and needed > free:
        raise SpecError(Problem("", f"writing the weights needs about {needed / 2**30:,.1f} GiB (fp32, twice) but {device} has "
                                    f"{free / 2**30:,.1f} GiB free", "build with --device meta (no weights), or a smaller spec"))


def check_weights_fit(resolved: ResolvedSpec, config_path: Path) -> None:
    """Refuse weights trained for another model: the resolved model in `config_path` (beside the
    weights) must equal `resolved.model`, value by value (compute-only settings, dtype and the
    attention backend, aside); the error lists what differs."""
    changes = value_changes(weight_values(read_model_config(config_path).model), weight_values(resolved.model))
    if changes:
        shown = "\n  ".join(changes[:12]) + (f"\n  ... and {len(changes) - 12} more" if len(changes) > 12 else "")
        raise InputError(f"the weights beside {config_path} are for another model; {len(changes)} values differ "
                         f"(theirs -> this spec's):\n  {shown}")
    weights = Path(config_path).parent / WEIGHTS_FILE
    if weights.is_file():  # the tensors themselves, through the same exact check `--init` and `import` use
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as handle:  # shapes only: nothing is loaded
            found = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        model = compile_model(resolved, device="meta")
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if model.tie_word_embeddings:
            found.setdefault("lm_head.weight", expected["lm_head.weight"])
        if not in_hf_layout({k: torch.empty(0) for k in found}):
            report = fit_report(expected, found)
            if not report.fits:
                raise InputError(report.message(str(weights)))


def write_model_files(resolved: ResolvedSpec, out_dir: Path, device: str = "cpu", seed: int = 0,
                      weights: Path | None = None, extra_files: tuple[Path, ...] = ()) -> list[Path]:
    """Write config.json and, unless `device` is "meta", model.safetensors: the seeded initial
    weights, or `weights` (a trained model.safetensors, whose config the caller has checked with
    `check_weights_fit`). `extra_files` (a tokenizer) are copied alongside. Returns the paths
    written: on the meta device there are no weights to save, so the list holds config.json
    only (callers say so to the user)."""
    require_device(device)
    _require_memory(resolved, device)
    model = compile_model(resolved, device=device, seed=seed)
    if weights is not None and torch.device(device).type != "meta":
        load_weights_into(model, weights)
    return save_model_dir(model, resolved, out_dir, seed=None if weights is not None else seed, extra_files=extra_files)


def _model_config(data: dict[str, Any], version: int, source: Path) -> ModelConfig:
    if version > FORMAT_VERSION:
        raise SpecError(Problem("", f"{source} was written by a newer minimind-spec (format {version}; this one reads "
                                    f"up to {FORMAT_VERSION})", "upgrade minimind-spec"))
    fields = dict(data)
    if version < 2:
        for key in REMOVED_IN_VERSION_2:
            fields.pop(key, None)
    if version < 3:
        fields.setdefault("qk_norm", False)  # added in format 3; earlier models had none
    unknown = set(fields) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise SpecError(Problem("", f"{source}: unknown model fields {sorted(unknown)} for format {version}"))
    fields["rope_scaling"] = RopeConfig(**fields["rope_scaling"])
    fields["moe"] = MoEConfig(**fields["moe"]) if fields["moe"] is not None else None
    if fields["lora"] is not None:
        lora = fields["lora"]
        fields["lora"] = LoRAConfig(**{**lora, "targets": tuple(lora["targets"]),
                                       "trainable_tokens": tuple(lora.get("trainable_tokens", ())),
                                       "modules_to_save": tuple(lora.get("modules_to_save", ()))})
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
    load_state_into(model, load_file(str(weights), device=str(device)), str(weights), fresh_adapters)


def load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, fresh_adapters: bool = False) -> None:
    """Load a state dict read from `source` into `model` after the exact fit check (`weights_fit`):
    anything missing, unexpected or mis-shaped is refused with every difference and the spec values behind it."""
    expected = set(model.state_dict())
    if in_hf_layout(state):  # an export in Qwen2-MoE's layout, or transformers' fused experts: back to ours
        state = from_hf(state, expected)
    extra = [k for k in state if k not in expected and k.endswith((".lora.A", ".lora.B", ".token_rows.values"))]
    if extra:  # adapters this model does not have: dropped only when they change nothing (B = 0)
        live = [k for k in extra if k.endswith(".lora.B") and bool(state[k].any())]
        if live:
            raise InputError(f"{source} holds trained LoRA adapters ({live[0]}, ...) that this model has no place for: "
                             "`minimind-spec lora merge` folds them into the base first")
        state = {k: v for k, v in state.items() if k not in extra}
    own = model.state_dict()
    reshaped = {k[:-len(".B")] for k in state if k.endswith(".lora.B") and k in own and state[k].shape != own[k].shape}
    if reshaped:  # adapters of another rank: kept fresh when untrained (B = 0, they change nothing), refused when trained
        live = sorted(k for k in reshaped if bool(state[k + ".B"].any()))
        if live:
            raise InputError(f"{source} holds trained LoRA adapters of another rank ({live[0]}: "
                             f"{tuple(state[live[0] + '.B'].shape)} here {tuple(own[live[0] + '.B'].shape)}): "
                             "`minimind-spec lora merge` folds them into the base first")
        state = {k: v for k, v in state.items() if k[:-len(".A")] not in reshaped or not k.endswith((".lora.A", ".lora.B"))}
        fresh_adapters = True
    state = with_tied_head(model, state)
    if isinstance(model, MiniMindForCausalLM) and model.tie_word_embeddings and "lm_head.weight" in state \
            and "model.embed_tokens.weight" in state and not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
        raise InputError(f"{source} does not fit this spec's model\nthe spec and the checkpoint differ in:\n"
                         "  hyperparams.tie_word_embeddings: spec true, checkpoint has an lm_head of its own")
    report = fit_report({k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in state.items()})
    if fresh_adapters:
        report = dataclasses.replace(report, missing=tuple(k for k in report.missing if not k.endswith(ADAPTER_SUFFIXES)))
    if not report.fits:
        raise InputError(report.message(source))
    model.load_state_dict(state, strict=False)
    if isinstance(model, MiniMindForCausalLM):
        model.tie_weights()
    if fresh_adapters:  # fresh token rows start as the loaded base's own rows (the model computes as its base)
        reset_token_rows(model)


def load_model(config_path: Path, weights: Path, device: str = "cpu") -> MiniMindForCausalLM:
    """Rebuild the model `config_path` describes and load `weights` into it."""
    model = compile_model(read_model_config(config_path), device=device)
    load_weights_into(model, weights)
    return model


def from_pretrained(path: Path, device: str = "cpu") -> MiniMindForCausalLM:
    """The model at `path` (a directory `save_pretrained` or `export` wrote, a run, a stage or a
    checkpoint: see `model_files.find_model`), rebuilt from its config with its weights."""
    files = find_model(path)
    return load_model(files.config, files.weights, device=device)


def load_model_files(out_dir: Path, device: str = "cpu") -> MiniMindForCausalLM:
    """Rebuild the model written by `write_model_files` (or a stage's final/) and load its weights."""
    out_dir = Path(out_dir)
    return load_model(out_dir / CONFIG_FILE, out_dir / WEIGHTS_FILE, device)


LORA_EXPORTS = ("merged", "base", "adapter")
GENERATION_CONFIG = "generation_config.json"


def export_model(config_path: Path, weights: Path, out_dir: Path, lora: str = "merged",
                 extra_files: tuple[Path, ...] = (), layout: str = "hf", quant: str = "f16") -> list[Path]:
    """Write a trained model as a model directory that loads without this package: as
    `LlamaForCausalLM` (dense) or `Qwen2MoeForCausalLM` (MoE), the architectures that compute it
    exactly (anything else is refused, naming the mismatch; see `hf_layout`), or with `layout`
    "minimind" in this package's own layout, which any spec has, or with `layout` "gguf" as one
    `.gguf` file (`quant` f16 or q8_0; `gguf_export`). A model with LoRA
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
    if layout == "gguf":
        from .gguf_export import gguf_architecture

        gguf_architecture(resolved.model)  # refuses before any work, naming the setting
    mismatches = hf_mismatches(resolved.model)
    if layout == "hf" and mismatches:
        raise InputError("no Hugging Face architecture computes this model exactly: " + "; ".join(mismatches)
                         + ". `--format minimind` writes it in minimind-spec's own layout")
    if resolved.model.lora is not None:
        model, resolved = merge_model(model, resolved) if lora == "merged" else without_adapters(model, resolved)
    tokenizer_dir = next((f.parent for f in extra_files if f.name == TOKENIZER_FILE), None)
    if layout == "gguf":
        from .gguf_export import GGUF_QUANTS, write_gguf

        target = Path(out_dir)
        if target.suffix != ".gguf":
            target = target / f"{resolved.name}-{quant}.gguf"
        if quant not in GGUF_QUANTS:
            raise InputError(f"--quant {quant!r}: one of {', '.join(GGUF_QUANTS)}")
        return [write_gguf(model, resolved.model, resolved.name, target, "q8_0" if quant == "q8_0" else "f16", tokenizer_dir)]
    with tempfile.TemporaryDirectory() as scratch:
        if tokenizer_dir is not None:  # the ids generate() stops and pads with, for transformers' generate too
            tokenizer = load_tokenizer(tokenizer_dir)
            generation = Path(scratch) / GENERATION_CONFIG
            generation.write_text(json.dumps({"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
                                              "pad_token_id": tokenizer.pad_id}, indent=2) + "\n")
            extra_files = (*extra_files, generation)
        return save_model_dir(model, resolved, out_dir, extra_files=extra_files, hf_layout=layout == "hf")
