"""Builders of the model's two ends: the token embedding and the language-model head.

The head is a bias-free `Projection` (weight (vocab, d_model)); when the spec ties it to the
embedding, the model shares `model.embed_tokens.weight` with it (`tie_weights`).
"""

from __future__ import annotations

from torch import nn

from .lora import Projection


def build_embedding(*, num_embeddings: int, dim: int) -> nn.Embedding:
    return nn.Embedding(num_embeddings, dim)


def build_lm_head(*, in_features: int, out_features: int) -> Projection:
    return Projection(in_features, out_features)
