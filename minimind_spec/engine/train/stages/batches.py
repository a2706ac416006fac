"""Batches on the device: rows of tokens (pretraining, SFT, distillation) and preference pairs.

`collate_rows` stacks `Row`s; when any row holds several samples, the batch carries their
boundaries as `builders.packing.PackedRows` (rows of one sample get positions 0..T-1), and the
objective hands them to the model so each sample attends to itself only. A `PairBatch` stacks
each pair's chosen and rejected sequences padded to the batch's longest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from builders.packing import PackedRows
from builders.techniques import IGNORE_INDEX

from ...data.packing import Row
from ...data.token_cache import TokenCache


@dataclass(frozen=True)
class TokenBatch:
    input_ids: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, IGNORE_INDEX where not trained
    reasoning: torch.Tensor  # (B, T) bool, inside <think> spans
    packed: PackedRows | None  # sample boundaries when a row holds several samples
    real_tokens: int  # non-padding positions


def collate_rows(rows: list[Row], device: torch.device | str) -> TokenBatch:
    packed = None
    if any(row.positions is not None for row in rows):
        seq_len = len(rows[0].input_ids)
        positions = np.stack([row.positions if row.positions is not None else np.arange(seq_len) for row in rows])  # (B, T)
        packed = PackedRows.from_positions(torch.from_numpy(positions).to(device))
    return TokenBatch(
        input_ids=torch.from_numpy(np.stack([r.input_ids for r in rows])).to(device),
        labels=torch.from_numpy(np.stack([r.labels for r in rows])).to(device),
        reasoning=torch.from_numpy(np.stack([r.reasoning for r in rows])).to(device),
        packed=packed,
        real_tokens=sum(r.real_tokens for r in rows),
    )


@dataclass(frozen=True)
class PairBatch:
    input_ids: torch.Tensor  # (2B, T) chosen, rejected, chosen, ... padded to the longest
    labels: torch.Tensor  # (2B, T) IGNORE_INDEX outside the responses
    samples: np.ndarray  # (2B,) cache sample indices (to look up precomputed reference log-probs)
    real_tokens: int

    @property
    def pairs(self) -> int:
        return self.input_ids.shape[0] // 2


def collate_pairs(cache: TokenCache, pairs: list[int], pad_id: int, device: torch.device | str) -> PairBatch:
    """Pairs i of a preference cache: samples 2i (chosen) and 2i + 1 (rejected), padded to the longest."""
    samples = np.array([s for pair in pairs for s in (2 * pair, 2 * pair + 1)], dtype=np.int64)
    sides = [cache.sample(int(s)) for s in samples]
    longest = max(len(tokens) for tokens, _, _ in sides)
    ids = np.full((len(sides), longest), pad_id, dtype=np.int64)
    labels = np.full((len(sides), longest), IGNORE_INDEX, dtype=np.int64)
    for row, (tokens, trained, _) in enumerate(sides):
        tokens = np.asarray(tokens, dtype=np.int64)  # the cache holds uint16/uint32: no -100 there
        ids[row, :len(tokens)] = tokens
        labels[row, :len(tokens)] = np.where(np.asarray(trained, dtype=bool), tokens, IGNORE_INDEX)
    return PairBatch(torch.from_numpy(ids).to(device), torch.from_numpy(labels).to(device), samples,
                     sum(len(t) for t, _, _ in sides))
