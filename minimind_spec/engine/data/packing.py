"""Rows of `seq_len` tokens from a token cache, so no compute is spent on padding.

- Pretraining: the cache's token stream (documents already wrapped `<|im_start|>` ...
  `<|im_end|>`) cut into consecutive full rows; the remainder shorter than a row is dropped.
  Documents in a row attend to the ones before them (as nanoGPT and MiniMind pretrain) unless
  `document_mask`: then each document is isolated like a packed sample.
- SFT and distillation: whole samples packed greedily in order into rows (a sample longer
  than `seq_len` was truncated when the cache was built); only a row's tail is padding.
  `packed=False` gives one sample per row padded to `seq_len` (how MiniMind's own trainer
  batches), for comparison.
A row holding more than one sample carries `positions` restarting at 0 at each sample (the
padding tail counts as a sample of its own): the model turns them into block-diagonal causal
attention (`builders.packing.PackedRows`), so a packed sample is trained exactly as if it were
alone. A row of one sample (or a stream row without document masking) has `positions` None:
plain causal attention from position 0 gives the same result, faster.
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
    positions: np.ndarray | None  # int64 (seq_len,) restarting at 0 per sample; None: 0..seq_len-1 serve
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


def restarting_positions(starts: np.ndarray, length: int) -> np.ndarray | None:
    """Positions 0, 1, ... restarting at each of `starts` (sorted offsets in the row, 0 not needed),
    or None when nothing restarts inside the row."""
    starts = starts[(starts > 0) & (starts < length)]
    if not len(starts):
        return None
    index = np.arange(length, dtype=np.int64)
    last_start = np.zeros(length, dtype=np.int64)
    last_start[starts] = starts
    return index - np.maximum.accumulate(last_start)


def stream_row(cache: TokenCache, layout: RowLayout, row: int, document_mask: bool = False) -> Row:
    start, end = row * layout.seq_len, (row + 1) * layout.seq_len
    ids = np.asarray(cache.tokens[start:end], dtype=np.int64)
    trained = np.asarray(cache.trained[start:end], dtype=bool)
    labels = np.where(trained, ids, IGNORE_INDEX)
    positions = None
    if document_mask:  # each document from position 0, attending to itself only
        offsets = np.asarray(cache.offsets[np.searchsorted(cache.offsets, start, "right"):
                                           np.searchsorted(cache.offsets, end, "left")], dtype=np.int64)
        positions = restarting_positions(offsets - start, layout.seq_len)
        if positions is not None:  # a document's first token is not predicted from the one before it
            labels[positions == 0] = IGNORE_INDEX
    return Row(ids, labels, np.asarray(cache.reasoning[start:end], dtype=bool), positions, layout.seq_len)


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
    positions = None
    if end - first > 1:  # several samples: each from position 0, the padding tail a sample of its own
        starts = np.asarray(cache.offsets[first:end + 1], dtype=np.int64) - start
        positions = restarting_positions(starts, layout.seq_len)
    return Row(ids, labels, reasoning, positions, real)
