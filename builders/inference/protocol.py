"""What generation needs from a model, as Protocols: decoding and generation are typed
against these, not against the model class, so `builders.model` can offer `generate` without
the inference modules importing it back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn

from ..lora import Projection
from ..positional import LearnedPositionEmbedding, RotaryEmbedding
from ..cache import StaticKVCache


class LogitsOutput(Protocol):
    logits: torch.Tensor  # (B, T, V)


class DecoderStack(Protocol):
    """The `model.` part of a causal LM: embeddings, decoder layers, final norm (read-only members)."""

    @property
    def embed_tokens(self) -> nn.Embedding: ...

    @property
    def embed_positions(self) -> LearnedPositionEmbedding | None: ...

    @property
    def rotary_emb(self) -> RotaryEmbedding | None: ...

    @property
    def layers(self) -> nn.ModuleList: ...

    @property
    def norm(self) -> nn.Module: ...


class CausalLM(Protocol):
    """A causal language model with a static KV cache (MiniMindForCausalLM is one)."""

    @property
    def model(self) -> DecoderStack: ...

    @property
    def lm_head(self) -> Projection: ...

    @property
    def max_position_embeddings(self) -> int: ...

    training: bool

    def __call__(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                 past_key_values: StaticKVCache | None = None, use_cache: bool = False,
                 logits_to_keep: int = 0) -> LogitsOutput: ...

    def new_cache(self, batch_size: int, max_length: int) -> StaticKVCache: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def train(self, mode: bool = True) -> nn.Module: ...

    def eval(self) -> nn.Module: ...
