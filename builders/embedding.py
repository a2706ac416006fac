"""Builders of the model's two ends: the token embedding and the language-model head.

The head is a bias-free `Projection` (weight (vocab, d_model)); when the spec ties it to the
embedding, the model shares `model.embed_tokens.weight` with it (`tie_weights`). Under LoRA
with trainable tokens, the embedding (and an untied head) carry `TokenRows` (`token_rows.py`).
"""

from __future__ import annotations

from .lora import Projection
from .token_rows import TokenEmbedding, TokenRows


def build_embedding(*, num_embeddings: int, dim: int, token_rows: TokenRows | None = None) -> TokenEmbedding:
    return TokenEmbedding(num_embeddings, dim, token_rows)


def build_lm_head(*, in_features: int, out_features: int, token_rows: TokenRows | None = None) -> Projection:
    head = Projection(in_features, out_features)
    if token_rows is not None:  # an untied head's own trainable rows (the model's forward applies them)
        head.token_rows = token_rows
    return head


def build_token_rows(*, token_ids: tuple[int, ...], dim: int) -> TokenRows:
    return TokenRows(token_ids, dim)
