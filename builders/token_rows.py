"""Trainable token rows: LoRA's way to learn tokens the frozen base never trained.

LoRA freezes the embedding and the head, so a token the base never saw (a chat marker such as
`<|im_start|>` or `<think>` when the base was only pretrained on plain text) keeps its random
embedding, and adapters on the projections cannot make up for it. `TokenRows` holds new values
for a few rows of a frozen matrix (the embedding, or an untied head): the module's effective
weight is the base with those rows replaced (`applied_to`), so only the rows train and the rest of
the matrix stays frozen and shared. This is PEFT's `trainable_token_indices`: its adapter file
stores the rows' values (not a difference) as `<module>.token_adapter.trainable_tokens_delta`,
and `lora_io` writes ours under those names.

The rows of the embedding live at `model.embed_tokens.token_rows`; with an untied head, the head
has its own at `lm_head.token_rows`; a tied head uses the embedding's. Fresh rows start as copies
of the base's rows (`reset_from`), so a fresh adapter changes nothing, as a fresh LoRA B = 0 does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenRows(nn.Module):
    """New values (rows, dim) for the rows `token_ids` of a frozen (vocab, dim) matrix."""

    indices: torch.Tensor  # (rows,) buffers, typed for the checker
    original: torch.Tensor  # (rows, dim)

    def __init__(self, token_ids: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.token_ids = tuple(token_ids)
        self.values = nn.Parameter(torch.empty(len(token_ids), dim))
        self.register_buffer("indices", torch.tensor(self.token_ids, dtype=torch.long), persistent=False)
        self.register_buffer("original", torch.empty(len(token_ids), dim), persistent=False)  # the base rows while merged
        self.enabled = True  # False: the base rows (a DPO reference without a second copy)
        self.merged = False

    def reset_parameters(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Rebuild the index buffer (it is not in the state dict) and draw provisional values; the model then
        copies the base's rows in (`reset_from`), and again when base weights are loaded into it."""
        with torch.no_grad():
            self.indices.copy_(torch.tensor(self.token_ids, dtype=torch.long))
            self.values.normal_(0.0, std, generator=generator)
        self.merged = False

    @torch.no_grad()
    def reset_from(self, weight: torch.Tensor) -> None:
        """Start from the base's own rows of `weight` (vocab, dim): the effective weight is then the base's."""
        self.values.copy_(weight[self.indices].to(self.values.dtype))

    def active(self) -> bool:
        return self.enabled and not self.merged

    def applied_to(self, weight: torch.Tensor) -> torch.Tensor:
        # weight: (vocab, dim) -> (vocab, dim) with the trained rows in place (differentiable in `values` only)
        if not self.active():
            return weight
        return weight.index_copy(0, self.indices, self.values.to(weight.dtype))

    def replace_logits(self, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        # hidden: (..., D), logits: (..., V) from the base head -> (..., V) with the rows' logits recomputed
        if not self.active():
            return logits
        return logits.index_copy(-1, self.indices, F.linear(hidden, self.values.to(hidden.dtype)).to(logits.dtype))

    @torch.no_grad()
    def merge_into(self, weight: torch.Tensor) -> None:
        """Write the rows into `weight` in place (keeping the base rows to undo it)."""
        if not self.merged:
            self.original.copy_(weight[self.indices])
            weight.index_copy_(0, self.indices, self.values.to(weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge_from(self, weight: torch.Tensor) -> None:
        if self.merged:
            weight.index_copy_(0, self.indices, self.original.to(weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"rows={len(self.token_ids)}, dim={self.values.shape[1]}"


class TokenEmbedding(nn.Embedding):
    """The token embedding, optionally with trainable rows (`token_rows`)."""

    def __init__(self, num_embeddings: int, dim: int, token_rows: TokenRows | None = None) -> None:
        super().__init__(num_embeddings, dim)
        self.token_rows = token_rows

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # input_ids: (...) -> (..., D)
        if self.token_rows is None or not self.token_rows.active():
            return super().forward(input_ids)
        return F.embedding(input_ids, self.token_rows.applied_to(self.weight))


def token_rows_of(model: nn.Module) -> list[tuple[TokenRows, torch.Tensor]]:
    """Each `TokenRows` of a compiled model with the base matrix it replaces rows of."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, TokenRows):
            owner = model.get_submodule(name.rpartition(".")[0])
            weight = owner.weight if hasattr(owner, "weight") else None
            if isinstance(weight, torch.Tensor):
                out.append((module, weight))
    return out


def reset_token_rows(model: nn.Module) -> int:
    """Start every token-rows adapter from the base rows it replaces (after base weights were loaded)."""
    found = token_rows_of(model)
    for rows, weight in found:
        rows.reset_from(weight)
    return len(found)
