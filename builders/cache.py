"""The static KV cache (the card's 'kv-cache-pinning' trick): per-layer key and value
buffers of a fixed maximum length, allocated once and written in place; attention reads
views of the filled prefix. Decoding never concatenates or reallocates.
"""

from __future__ import annotations

import torch


class StaticKVCache:
    """Buffers (B, n_kv_heads, max_length, head_dim) per layer; `length` positions are filled."""

    def __init__(self, *, n_layers: int, batch_size: int, n_kv_heads: int, max_length: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        shape = (batch_size, n_kv_heads, max_length, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.batch_size = batch_size
        self.max_length = max_length
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v: (B, Hkv, T, d) written at [offset, offset + T) -> views (B, Hkv, offset + T, d)
        end = offset + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache is full: {end} positions needed, {self.max_length} allocated")
        key_buf, value_buf = self.keys[layer], self.values[layer]
        key_buf[:, :, offset:end].copy_(k)
        value_buf[:, :, offset:end].copy_(v)
        return key_buf[:, :, :end], value_buf[:, :, :end]

    def advance(self, n: int) -> None:
        """Mark n more positions as filled (the model calls this after all layers ran)."""
        self.length += n

    def reset(self) -> None:
        """Forget the contents without freeing the buffers."""
        self.length = 0

    def get_seq_length(self) -> int:
        return self.length
