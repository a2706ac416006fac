"""builders: the PyTorch back end of minimind-spec.

One builder per op type of the module graph (attention, mlp, moe, norm, positional, lora,
embedding), registered in one closed registry (`builders.registry.BUILDERS`); the model
container (`model`); the static KV cache (`cache`); decoding and generation (`inference/`);
and the training objectives as pure functions (`techniques/`). This package never imports
the spec models: the engine (`minimind_spec.engine.compile`) reads the graph and passes flat,
typed arguments.
"""

from __future__ import annotations

from .cache import StaticKVCache
from .inference import generate
from .lora import (LoRAAdapter, Projection, adapters_disabled, has_adapters, load_lora_state_dict, lora_state_dict, merge_lora,
                   unmerge_lora)
from .model import CausalLMOutput, DecoderLayer, MiniMindForCausalLM, MiniMindModel
from .registry import BUILDERS, builder_for
from .techniques import IGNORE_INDEX, causal_lm_loss, distill_loss, dpo_loss, sequence_log_probs, token_log_probs

__all__ = [
    "BUILDERS", "IGNORE_INDEX", "CausalLMOutput", "DecoderLayer", "LoRAAdapter", "MiniMindForCausalLM", "MiniMindModel",
    "Projection", "StaticKVCache", "adapters_disabled", "builder_for", "causal_lm_loss", "distill_loss", "dpo_loss",
    "generate", "has_adapters", "load_lora_state_dict", "lora_state_dict", "merge_lora", "sequence_log_probs",
    "token_log_probs", "unmerge_lora",
]
