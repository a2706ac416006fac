"""Rows of `seq_len` tokens from a token cache, so no compute is spent on padding.

- Pretraining: the cache's token stream (documents already wrapped `<|im_start|>` ...
  `<|im_end|>`) cut into consecutive full rows; the remainder shorter than a row is dropped.
- SFT and distillation: whole samples packed greedily in order into rows (a sample longer
  than `seq_len` was truncated when the cache was built); only a row's tail is padding.
  `packed=False` gives one sample per row padded to `seq_len` (how MiniMind's own trainer
  batches), for comparison.
Labels follow `builders.techniques.causal_lm`: aligned with the ids, IGNORE_INDEX (-100)
where nothing is trained (prompts, padding); `reasoning` marks `<think>` tokens for weighting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .chatml import IGNORE_INDEX
from .token_cache import TokenCache


@dataclass(frozen=True)
class Row:
    input_ids: np.ndarray  # int64 (seq_len,)
    labels: np.ndarray  # int64 (seq_len,), IGNORE_INDEX where not trained
    reasoning: np.ndarray  # bool (seq_len,)
    real_tokens: int  # positions that are data, not padding


@dataclass(frozen=True)
class RowLayout:
    """Which cache samples form each row (SFT), or how many stream rows there are (pretraining)."""

    seq_len: int
    spans: tuple[tuple[int, int], ...]  # (first sample, end sample) per row; empty for a token stream
    stream_rows: int  # rows cut from the token stream (pretraining); 0 for sample rows
    real_tokens: int

    @property
    def rows(self) -> int:
        return self.stream_rows or len(self.spans)

    @property
    def efficiency(self) -> float:
        """Share of the computed positions that are real tokens."""
        return self.real_tokens / (self.rows * self.seq_len) if self.rows else 0.0


def stream_layout(cache: TokenCache, seq_len: int) -> RowLayout:
    rows = cache.meta.tokens // seq_len
    return RowLayout(seq_len, (), rows, rows * seq_len)


def sample_layout(cache: TokenCache, seq_len: int, packed: bool = True) -> RowLayout:
    lengths = cache.lengths
    if np.any(lengths > seq_len):
        raise ValueError(f"samples up to {int(lengths.max())} tokens do not fit rows of {seq_len}: build the cache "
                         "with max_length = seq_len")
    spans: list[tuple[int, int]] = []
    if not packed:
        spans = [(i, i + 1) for i in range(len(lengths))]
    else:
        first, filled = 0, 0
        for i, length in enumerate(lengths.tolist()):
            if filled + length > seq_len:
                spans.append((first, i))
                first, filled = i, 0
            filled += length
        if len(lengths):
            spans.append((first, len(lengths)))
    return RowLayout(seq_len, tuple(spans), 0, int(lengths.sum()))


def stream_row(cache: TokenCache, layout: RowLayout, row: int) -> Row:
    start = row * layout.seq_len
    ids = np.asarray(cache.tokens[start:start + layout.seq_len], dtype=np.int64)
    trained = np.asarray(cache.trained[start:start + layout.seq_len], dtype=bool)
    labels = np.where(trained, ids, IGNORE_INDEX)
    return Row(ids, labels, np.asarray(cache.reasoning[start:start + layout.seq_len], dtype=bool), layout.seq_len)


def sample_row(cache: TokenCache, layout: RowLayout, row: int, pad_id: int) -> Row:
    first, end = layout.spans[row]
    start, stop = int(cache.offsets[first]), int(cache.offsets[end])
    real = stop - start
    ids = np.full(layout.seq_len, pad_id, dtype=np.int64)
    labels = np.full(layout.seq_len, IGNORE_INDEX, dtype=np.int64)
    reasoning = np.zeros(layout.seq_len, dtype=bool)
    ids[:real] = cache.tokens[start:stop]
    trained = np.asarray(cache.trained[start:stop], dtype=bool)
    labels[:real] = np.where(trained, ids[:real], IGNORE_INDEX)
    reasoning[:real] = cache.reasoning[start:stop]
    return Row(ids, labels, reasoning, real)
