"""Sample boundaries of packed rows: several samples laid end to end in one row of the batch.

A packed row is trained as if each of its samples were alone: every sample's positions start
at 0, and a token attends only to the tokens before it in its own sample (block-diagonal causal
attention). `PackedRows` carries those boundaries from the data to the attention:

- `position_ids` (B, T): restarting at 0 at each sample's first token (padding at a row's tail
  is a sample of its own, so it never joins a real one);
- for PyTorch SDPA and the eager backend, an additive (B, 1, T, T) mask built from them;
- for flash-attn's variable-length kernel, `cu_seqlens`: where each sample starts in the
  flattened B*T tokens (int32, S + 1 values) and the longest sample.
Everything is derived from `position_ids`, so a row is fully described by where its positions
restart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedRows:
    position_ids: torch.Tensor  # (B, T) int64, 0 at the first token of every sample
    cu_seqlens: torch.Tensor  # (S + 1,) int32 sample offsets in the flattened B*T tokens
    max_seqlen: int  # the longest sample

    @classmethod
    def from_positions(cls, position_ids: torch.Tensor) -> "PackedRows":
        """The boundaries of rows whose positions restart at 0 at each sample (every row starts one)."""
        if position_ids.dim() != 2 or bool((position_ids[:, 0] != 0).any()):
            raise ValueError("packed position_ids are (B, T) and every row starts a sample at position 0")
        flat = position_ids.reshape(-1)  # (B*T,)
        starts = torch.nonzero(flat == 0).flatten()  # (S,)
        ends = torch.cat((starts[1:], starts.new_tensor([flat.numel()])))  # (S,)
        cu_seqlens = torch.cat((starts, starts.new_tensor([flat.numel()]))).to(torch.int32)  # (S + 1,)
        return cls(position_ids, cu_seqlens, int((ends - starts).max()))

    @property
    def samples(self) -> int:
        return self.cu_seqlens.numel() - 1

    def segment_ids(self) -> torch.Tensor:
        # -> (B, T): the index of the sample each position belongs to, counted within its row
        return (self.position_ids == 0).long().cumsum(dim=-1)

    def attention_mask(self, dtype: torch.dtype, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        """Additive (B, 1, T, T) block-diagonal causal mask: 0 where a query may attend a key (same
        sample, not later), the dtype's minimum elsewhere; `key_padding` (B, T), 0 for padding keys."""
        segments = self.segment_ids()  # (B, T)
        T = segments.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()  # (T, T)
        allowed = (segments[:, :, None] == segments[:, None, :]) & causal  # (B, T, T)
        if key_padding is not None:
            allowed = allowed & key_padding[:, None, :].bool()
        zero = torch.zeros((), dtype=dtype, device=segments.device)
        return torch.where(allowed[:, None], zero, torch.finfo(dtype).min)  # (B, 1, T, T)
