"""What generation needs from a model, as Protocols: decoding and generation are typed
against these, not against the model class, so `builders.model` can offer `generate` without
the inference modules importing it back.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from ..lora import Projection
from ..positional import LearnedPositionEmbedding, RotaryEmbedding
from ..cache import StaticKVCache


class LogitsOutput(Protocol):
    logits: torch.Tensor  # (B, T, V)


class DecoderStack(Protocol):
    """The `model.` part of a causal LM: embeddings, decoder layers, final norm."""

    embed_tokens: nn.Embedding
    embed_positions: LearnedPositionEmbedding | None
    rotary_emb: RotaryEmbedding | None
    layers: nn.ModuleList
    norm: nn.Module


class CausalLM(Protocol):
    """A causal language model with a static KV cache (MiniMindForCausalLM is one)."""

    model: DecoderStack
    lm_head: Projection
    max_position_embeddings: int
    training: bool

    def __call__(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                 past_key_values: StaticKVCache | None = None, use_cache: bool = False,
                 logits_to_keep: int = 0) -> LogitsOutput: ...

    def new_cache(self, batch_size: int, max_length: int) -> StaticKVCache: ...

    def parameters(self, recurse: bool = True): ...  # noqa: ANN201 - nn.Module's

    def modules(self): ...  # noqa: ANN201 - nn.Module's

    def train(self, mode: bool = True) -> nn.Module: ...

    def eval(self) -> nn.Module: ...
