"""Inference: the packed-weight decode step and text generation over the static KV cache.

Typed against the `CausalLM` protocol (`protocol.py`), so nothing here imports the model.
"""

from .decode import DecodeStep, drop_packed_weights, packed_weights, supports_fast_decode
from .generate import apply_repetition_penalty, filter_top_k_top_p, generate, next_token
from .protocol import CausalLM, DecoderStack

__all__ = [
    "CausalLM", "DecodeStep", "DecoderStack", "apply_repetition_penalty", "drop_packed_weights",
    "filter_top_k_top_p", "generate", "next_token", "packed_weights", "supports_fast_decode",
]
