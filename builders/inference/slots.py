"""Continuous batching: one static KV cache of `slots` rows, each row a request at its own length.

A request is prefilled alone (the model's own forward on its prompt, batch 1, exactly as
`generate` prefills) and its keys and values are copied into a free row; from then on every
decode step runs one token of every active row together through the packed decode weights
(`decode.packed_weights`): each row reads its RoPE position from its own length, writes its key
and value at that position, and attends to its own prefix only (an additive mask per row).
A finished request frees its row for the next; nothing is reallocated.

The arithmetic is `decode.DecodeStep`'s, op for op (fused residual adds, RoPE with the signed sin
table, one row without a mask), so a request's greedy tokens are those of `generate` on its
prompt alone (checked token for token in fp32 by the server tests).
"""

from __future__ import annotations

import torch
from torch.nn.attention import sdpa_kernel

from ..attention import BACKENDS
from ..mlp import GatedMLP
from ..positional import swap_halves
from .decode import _norm, layer_parts, packed_weights
from .generate import DECODE_SDPA_BACKENDS
from .protocol import CausalLM
from .quant import Quant, check_quant


class SlotBatch:
    """Rows of one static KV cache, each holding one request; `prefill` fills a row, `step` advances rows."""

    def __init__(self, model: CausalLM, slots: int, max_length: int, quant: Quant = "none") -> None:
        if max_length > model.max_position_embeddings:
            raise ValueError(f"max_length {max_length} exceeds the model's {model.max_position_embeddings} positions")
        self.model = model
        self.quant = check_quant(quant)  # "int8": decode through per-row int8 copies of the linear weights
        self.slots = slots
        self.max_length = max_length
        weight = model.model.embed_tokens.weight
        self.cache = model.new_cache(slots, max_length)  # on the weights' device, in their dtype
        self.lengths = torch.zeros(slots, dtype=torch.long, device=weight.device)  # (S,) filled positions per row
        self.dtype = weight.dtype
        self.cos = self.sin = None  # (P, d) in the model's dtype; sin's first half negated, as DecodeStep keeps them
        rotary = model.model.rotary_emb
        if rotary is not None:
            sin = rotary.sin_table.to(self.dtype)
            half = sin.shape[-1] // 2
            self.cos = rotary.cos_table.to(self.dtype)
            self.sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)

    @torch.inference_mode()
    def prefill(self, slot: int, ids: list[int]) -> torch.Tensor:
        """Run `ids` alone into row `slot`; returns the logits (V,) of the token after them."""
        if not 0 < len(ids) < self.max_length:
            raise ValueError(f"a prompt of {len(ids)} tokens does not fit {self.max_length} positions")
        model = self.model
        device = self.cache.keys[0].device
        alone = model.new_cache(1, len(ids))
        with sdpa_kernel(DECODE_SDPA_BACKENDS):
            out = model(torch.tensor([ids], device=device), past_key_values=alone, use_cache=True, logits_to_keep=1)
        for layer in range(len(self.cache.keys)):  # (1, Hkv, T, d) into the row
            self.cache.keys[layer][slot, :, :len(ids)].copy_(alone.keys[layer][0])
            self.cache.values[layer][slot, :, :len(ids)].copy_(alone.values[layer][0])
        self.lengths[slot] = len(ids)
        return out.logits[0, -1]  # (V,)

    def free(self, slot: int) -> None:
        self.lengths[slot] = 0

    def length(self, slot: int) -> int:
        return int(self.lengths[slot])

    @torch.inference_mode()
    def step(self, slots: list[int], tokens: list[int]) -> torch.Tensor:
        """Feed one token to each row of `slots` (their newest tokens); returns logits (n, V) for the next ones.
        Op for op `decode.DecodeStep`'s arithmetic (`_run_layers`), with each row at its own position."""
        model, cache, packed = self.model, self.cache, packed_weights(self.model, self.quant)
        stack = model.model
        device = cache.keys[0].device
        rows = torch.tensor(slots, device=device)  # (n,)
        positions = self.lengths[rows]  # (n,) where each row's token goes
        if int(positions.max()) >= self.max_length:
            raise ValueError("a row of the KV cache is full")
        n, span = len(slots), int(positions.max()) + 1
        contiguous = slots == list(range(slots[0], slots[0] + n))
        x = stack.embed_tokens(torch.tensor(tokens, device=device))  # (n, D)
        if stack.embed_positions is not None:
            x = x + stack.embed_positions.weight[positions]  # (n, D)
        cos = sin = None
        if self.cos is not None and self.sin is not None:
            cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (n, 1, d)
        mask = None  # one row attends its whole prefix: no mask, as DecodeStep
        if n > 1:
            allowed = torch.arange(span, device=device)[None, :] <= positions[:, None]  # (n, S') each row its own prefix
            mask = torch.where(allowed, torch.zeros((), dtype=self.dtype, device=device),
                               torch.finfo(self.dtype).min)[:, None, None, :]  # (n, 1, 1, S')
        upcast = x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)
        flat_index: torch.Tensor | None = None
        with sdpa_kernel(DECODE_SDPA_BACKENDS):
            for index, (layer, weights) in enumerate(zip(stack.layers, packed.layers)):
                parts = layer_parts(layer)
                attn = parts.attention
                H, Hkv, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
                qkv = weights.qkv(_norm(parts.input_norm, x))  # (n, (H + 2 Hkv) d)
                qk = qkv[:, :(H + Hkv) * d].view(n, H + Hkv, d)
                if attn.q_norm is not None and attn.k_norm is not None:
                    qk = torch.cat([attn.q_norm(qk[:, :H]), attn.k_norm(qk[:, H:])], dim=1)  # (n, H + Hkv, d)
                if cos is not None and sin is not None:  # sin carries rotate_half's sign
                    qk = torch.addcmul(qk * cos, swap_halves(qk), sin)  # (n, H + Hkv, d)
                v = qkv[:, (H + Hkv) * d:].view(n, Hkv, d)
                key_buf, value_buf = cache.keys[index], cache.values[index]  # (S, Hkv, L, d)
                if flat_index is None:  # where (row, head, position) lies in the flattened buffer: (n * Hkv,)
                    heads = torch.arange(Hkv, device=device)
                    flat_index = ((rows[:, None] * Hkv + heads[None, :]) * self.max_length + positions[:, None]).reshape(-1)
                key_buf.view(-1, d).index_copy_(0, flat_index, qk[:, H:].reshape(n * Hkv, d))
                value_buf.view(-1, d).index_copy_(0, flat_index, v.reshape(n * Hkv, d))
                if contiguous:  # views, no copy
                    keys = key_buf.narrow(0, slots[0], n).narrow(2, 0, span)  # (n, Hkv, S', d)
                    values = value_buf.narrow(0, slots[0], n).narrow(2, 0, span)
                else:
                    keys, values = key_buf[rows, :, :span], value_buf[rows, :, :span]
                q = qk[:, :H, None]  # (n, H, 1, d)
                if upcast:
                    out = BACKENDS[attn.backend](q.float(), keys.float(), values.float(), mask, 0.0, False).to(x.dtype)
                else:
                    out = BACKENDS[attn.backend](q, keys, values, mask, 0.0, False)  # (n, H, 1, d)
                x = weights.o.add(x, out.view(n, H * d))  # (n, D)
                h = _norm(parts.post_attention_norm, x)  # (n, D)
                if weights.gate_up is not None and weights.down is not None and isinstance(parts.mlp, GatedMLP):
                    gate_up = weights.gate_up(h)  # (n, 2 hidden)
                    hidden = gate_up.shape[1] // 2
                    x = weights.down.add(x, parts.mlp.act_fn(gate_up[:, :hidden]).mul_(gate_up[:, hidden:]))  # (n, D)
                else:
                    x = x + parts.mlp(h[:, None], None)[0][:, 0]  # MoE: its own module on (n, 1, D)
        self.lengths[rows] += 1
        return packed.lm_head(_norm(stack.norm, x))  # (n, V)
