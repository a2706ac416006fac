"""builders: the PyTorch back end of minimind-spec.

One builder per op type of the module graph (attention, mlp, moe, norm, positional, lora),
registered in one closed registry (`builders.registry.BUILDERS`), plus the model container,
the static KV cache and generation. This package never imports the spec models: the
compiler (`minimind_spec.compile`) reads the graph and passes flat, typed arguments.
"""

from __future__ import annotations

from .cache import StaticKVCache
from .generate import generate
from .lora import LoRAAdapter, Projection, load_lora_state_dict, lora_state_dict, merge_lora, unmerge_lora
from .model import CausalLMOutput, DecoderLayer, MiniMindForCausalLM, MiniMindModel
from .registry import BUILDERS, builder_for

__all__ = [
    "BUILDERS", "CausalLMOutput", "DecoderLayer", "LoRAAdapter", "MiniMindForCausalLM", "MiniMindModel", "Projection",
    "StaticKVCache", "builder_for", "generate", "load_lora_state_dict", "lora_state_dict", "merge_lora", "unmerge_lora",
]
