"""Write a model directory: `config.json` and `model.safetensors`, the files every other
part reads back (`export.read_model_config`, `export.load_weights_into`).

config.json holds the keys a Hugging Face Llama config has (hidden_size, num_attention_heads,
rope_theta, rope_scaling, ...) so dense RoPE/RMSNorm/SiLU builds load in transformers as
`LlamaForCausalLM` (MoE ones as `Qwen2MoeForCausalLM` when written in that layout, see
`hf_layout`); our own fields (MoE, LoRA, norm kind, the whole resolved ModelConfig) sit under
"minimind_spec", from which the exact same module tree is rebuilt. Weights are safetensors:
nothing here pickles anything. `compile` uses `save_model_dir` for `model.save_pretrained`.
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

from ..config import ModelConfig, ResolvedSpec
from ..model_files import CONFIG_FILE, WEIGHTS_FILE
from .hf_layout import QWEN2_MOE, QWEN3, QWEN3_MOE, hf_architecture, qwen2_moe_keys, qwen3_keys, to_hf
from .model_io import model_tensors, write_tensors

FORMAT_VERSION = 3  # 2: ModelConfig without label_smoothing and static_kv_cache; 3: qk_norm (older files still load)
INIT_STD = 0.02  # the initial weights' standard deviation (compile), recorded as initializer_range


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
    llama_compatible = architecture in ("llama", QWEN3)  # Qwen3 is Llama's config plus its own keys
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
    if architecture == QWEN3 or (hf_layout and architecture == QWEN3_MOE):
        config |= qwen3_keys(c)
    if hf_layout and architecture == QWEN2_MOE:
        config |= qwen2_moe_keys(c)
    return config


def save_model_dir(model: torch.nn.Module, resolved: ResolvedSpec, out_dir: Path, seed: int | None = None,
                   extra_files: tuple[Path, ...] = (), hf_layout: bool = False) -> list[Path]:
    """Write `model` (built from `resolved`) as a model directory: config.json, model.safetensors
    (a tied lm_head once; none on the meta device) and `extra_files`. Every file is written into
    a temporary directory inside `out_dir` and then renamed into place, weights first and
    config.json last, so no file is ever half-written and an error before the renames leaves
    the directory as it was (a crash between renames can leave new weights beside an old config)."""
    if any(getattr(module, "merged", False) for module in model.modules()):
        raise ValueError("the model's LoRA adapters are merged into its weights (merge_lora): saving both would apply them "
                         "twice; unmerge_lora(model) first, or write the dense model (`minimind-spec lora merge`)")
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
            state = model_tensors(model)  # a tied lm_head once
            if hf_layout:
                state = to_hf(state, resolved.model)
            write_tensors(state, staging / WEIGHTS_FILE, metadata={"format": "pt", "name": resolved.name})
            names.append(WEIGHTS_FILE)
        for extra in extra_files:
            shutil.copy(extra, staging / extra.name)
            names.append(extra.name)
        for name in [*names[1:], names[0]]:  # config.json last: it names the weights beside it
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in names]
