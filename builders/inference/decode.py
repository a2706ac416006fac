"""The decode fast path: one new token per sequence through packed copies of the weights.

A batch-1 decode step is ~57 matrix-vector products over 1-3 MB weights, and on a CPU the
kernel, not DRAM, sets the pace: `F.linear` on the separate (out, in) weights streams about
10 GB/s, while fewer, larger products through a faster kernel stream 16-24 GB/s. So at
generation time the model's weights are packed once into:

- per layer: one fused q/k/v weight (q_out + 2 kv_out, D), one o weight, one fused gate/up
  weight (2 hidden, D) and one down weight, and the head (V, D);
- LoRA adapters that are present and not merged are folded into the packed copy (the
  model's own weights are untouched);
- each packed weight in the layout of the fastest available kernel: oneDNN's prepacked
  linear on CPU (`torch.ops.mkldnn`, the op Inductor itself emits for CPU linears), else the
  transposed (in, out) contiguous layout for `torch.mm` on CPU, else plain (out, in) for
  `F.linear` on accelerators.

The pack is cached on the model as a plain attribute (not a parameter or buffer, so the
state dict and module tree do not change) together with a signature of every parameter
(storage pointer, version counter, dtype, device) and every adapter's merged flag; any
optimizer step, `load_state_dict`, `.to()`, merge or unmerge changes the signature and the
next generation repacks. `drop_packed_weights(model)` frees it.

Layers whose MLP is a mixture of experts run their MLP module as is (only attention is
packed); norms, attention backends and activations are the model's own modules and
functions, so the arithmetic is the plain path's up to the order of summation in matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import nn

from ..attention import BACKENDS, Attention
from ..lora import Projection
from ..mlp import GatedMLP
from ..norm import RMSNorm
from ..positional import rotate_half
from ..cache import StaticKVCache
from .protocol import CausalLM

_ATTRIBUTE = "_packed_decode_weights"


def _onednn_usable(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear:
    """A frozen bias-free linear y = x W^T, stored for the fastest matrix-vector kernel at hand."""

    def __init__(self, weight: torch.Tensor) -> None:
        # weight: (out, in)
        self.out_features = weight.shape[0]
        weight = weight.detach().contiguous()
        self.kind = "linear"
        self.weight = weight
        if _onednn_usable(weight):
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
                self.onednn = torch.ops.mkldnn._linear_pointwise.default
                self.onednn(torch.zeros(1, weight.shape[1], dtype=weight.dtype), packed, None, "none", [], "")
                self.kind, self.weight = "onednn", packed
            except (RuntimeError, AttributeError):  # an old or unusual build: use the next best kernel
                self.kind = "linear"
        if self.kind == "linear" and weight.device.type == "cpu":
            self.kind, self.weight = "mm", weight.t().contiguous()  # (in, out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, in) -> (B, out)
        if self.kind == "onednn":
            return self.onednn(x, self.weight, None, "none", [], "")
        if self.kind == "mm":
            return torch.mm(x, self.weight)
        return F.linear(x, self.weight)


def _effective_weight(projection: Projection) -> torch.Tensor:
    """The weight the projection applies: base plus the adapter's update when not merged."""
    weight = projection.weight.detach()
    if projection.lora is not None and not projection.merged:
        weight = weight + projection.lora.delta_weight().detach().to(weight.dtype)
    return weight


@dataclass
class PackedLayer:
    qkv: PackedLinear  # (B, D) -> (B, (H + 2 Hkv) d)
    o: PackedLinear  # (B, H d) -> (B, D)
    gate_up: PackedLinear | None  # (B, D) -> (B, 2 hidden); None for MoE layers
    down: PackedLinear | None  # (B, hidden) -> (B, D)


@dataclass
class PackedWeights:
    layers: list[PackedLayer]
    lm_head: PackedLinear
    signature: tuple[object, ...]


def _signature(model: CausalLM) -> tuple[object, ...]:
    params = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())
    merged = tuple(m.merged for m in model.modules() if isinstance(m, Projection) and m.lora is not None)
    return params, merged


@dataclass(frozen=True)
class LayerParts:
    """A decoder layer's submodules, typed (nn.Module's attributes are `Tensor | Module` to a type checker)."""

    attention: Attention
    input_norm: nn.Module
    post_attention_norm: nn.Module
    mlp: nn.Module


def layer_parts(layer: nn.Module) -> LayerParts:
    attention, first, second, mlp = layer.self_attn, layer.input_layernorm, layer.post_attention_layernorm, layer.mlp
    if not (isinstance(attention, Attention) and isinstance(first, nn.Module) and isinstance(second, nn.Module)
            and isinstance(mlp, nn.Module)):
        raise TypeError(f"{type(layer).__name__} is not a MiniMind decoder layer")
    return LayerParts(attention, first, second, mlp)


@torch.no_grad()
def _pack(model: CausalLM, signature: tuple[object, ...]) -> PackedWeights:
    layers = []
    for layer in model.model.layers:
        parts = layer_parts(layer)
        attn = parts.attention
        qkv = torch.cat([_effective_weight(attn.q_proj), _effective_weight(attn.k_proj), _effective_weight(attn.v_proj)])
        gate_up = down = None
        if isinstance(parts.mlp, GatedMLP):
            mlp = parts.mlp
            gate_up = PackedLinear(torch.cat([_effective_weight(mlp.gate_proj), _effective_weight(mlp.up_proj)]))
            down = PackedLinear(_effective_weight(mlp.down_proj))
        layers.append(PackedLayer(qkv=PackedLinear(qkv), o=PackedLinear(_effective_weight(attn.o_proj)),
                                  gate_up=gate_up, down=down))
    return PackedWeights(layers=layers, lm_head=PackedLinear(_effective_weight(model.lm_head)), signature=signature)


class _PackSlot:
    """Holds a model's pack; copies and pickles of the model get an empty slot (the pack is
    derived data, and oneDNN's opaque tensors can be neither deep-copied nor pickled)."""

    def __init__(self) -> None:
        self.packed: PackedWeights | None = None

    def __deepcopy__(self, memo: dict[int, object]) -> _PackSlot:
        return _PackSlot()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return _PackSlot, ()


def packed_weights(model: CausalLM) -> PackedWeights:
    """The model's packed decode weights, rebuilt when any parameter changed since the last pack."""
    signature = _signature(model)
    slot = model.__dict__.setdefault(_ATTRIBUTE, _PackSlot())
    if slot.packed is None or slot.packed.signature != signature:
        slot.packed = None  # free the stale pack before building the new one
        slot.packed = _pack(model, signature)
    return slot.packed


def drop_packed_weights(model: CausalLM) -> None:
    """Free the packed copy (it is rebuilt by the next generation that wants it)."""
    model.__dict__.pop(_ATTRIBUTE, None)


def _norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's norm on x (B, D): RMSNorm's arithmetic without the module call, else the module."""
    if type(module) is RMSNorm:
        if x.dtype == torch.float32:  # weight * normed, both fp32: the same products inside rms_norm
            return F.rms_norm(x, (module.dim,), module.weight, module.eps)
        return module.weight * F.rms_norm(x.float(), (module.dim,), eps=module.eps).to(x.dtype)
    return module(x)


class DecodeStep:
    """Runs one token per sequence through the packed weights, writing the static cache.

    Built after the prefill: `cache` holds the prompt, `attention_mask` (B, T + N) covers the
    prompt (zeros where left-padded) and every position to be generated (ones).
    """

    def __init__(self, model: CausalLM, cache: StaticKVCache, attention_mask: torch.Tensor | None) -> None:
        self.model = model
        self.packed = packed_weights(model)
        self.cache = cache
        stack = model.model
        self.rotary = stack.rotary_emb
        self.embed_positions = stack.embed_positions
        dtype = stack.embed_tokens.weight.dtype
        self.additive_mask = None  # (B, 1, 1, T + N): 0 where a key may be attended, the dtype's minimum elsewhere
        self.positions = None  # (B,) next RoPE/absolute position per row when left-padded
        if attention_mask is not None:
            allowed = attention_mask.bool()[:, None, None, :]
            self.additive_mask = torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device),
                                             torch.finfo(dtype).min)
            self.positions = attention_mask[:, :cache.length].long().sum(-1)  # (B,) real tokens seen so far

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        # token: (B,) the newest token of each row -> logits (B, V) for the next one
        model, cache, packed = self.model, self.cache, self.packed
        stack = model.model
        B = token.shape[0]
        offset = cache.length
        if self.positions is None:
            position: torch.Tensor | slice = slice(offset, offset + 1)
        else:
            position = self.positions
        x = stack.embed_tokens(token)  # (B, D)
        if self.embed_positions is not None:
            x = x + self.embed_positions.weight[position]  # (B|1, D)
        cos = sin = None
        if self.rotary is not None:
            cos = self.rotary.cos_table[position][:, None].to(x.dtype)  # (B|1, 1, d)
            sin = self.rotary.sin_table[position][:, None].to(x.dtype)
        mask = self.additive_mask[..., :offset + 1] if self.additive_mask is not None else None  # (B, 1, 1, S)
        for index, (layer, weights) in enumerate(zip(stack.layers, packed.layers)):
            parts = layer_parts(layer)
            attn = parts.attention
            H, Hkv, d = attn.n_heads, attn.n_kv_heads, attn.head_dim
            qkv = weights.qkv(_norm(parts.input_norm, x))  # (B, (H + 2 Hkv) d)
            qk = qkv[:, :(H + Hkv) * d].view(B, H + Hkv, d)
            if attn.q_norm is not None and attn.k_norm is not None:  # QK-norm, per head, before RoPE
                qk = torch.cat([attn.q_norm(qk[:, :H]), attn.k_norm(qk[:, H:])], dim=1)  # (B, H + Hkv, d)
            if cos is not None and sin is not None:
                qk = torch.addcmul(qk * cos, rotate_half(qk), sin)  # (B, H + Hkv, d), q and k rotated together
            v = qkv[:, (H + Hkv) * d:].view(B, Hkv, d)
            key_buf, value_buf = cache.keys[index], cache.values[index]
            key_buf.select(2, offset).copy_(qk[:, H:])
            value_buf.select(2, offset).copy_(v)
            q = qk[:, :H, None]  # (B, H, 1, d)
            keys, values = key_buf.narrow(2, 0, offset + 1), value_buf.narrow(2, 0, offset + 1)  # (B, Hkv, S, d)
            out = BACKENDS[attn.backend](q, keys, values, mask, 0.0, False)  # (B, H, 1, d)
            x = x + weights.o(out.view(B, H * d))  # (B, D); x is this step's own tensor from here on
            h = _norm(parts.post_attention_norm, x)  # (B, D)
            if weights.gate_up is not None and weights.down is not None and isinstance(parts.mlp, GatedMLP):
                gate_up = weights.gate_up(h)  # (B, 2 hidden)
                hidden = gate_up.shape[1] // 2
                x.add_(weights.down(parts.mlp.act_fn(gate_up[:, :hidden]).mul_(gate_up[:, hidden:])))
            else:
                x = x + parts.mlp(h[:, None], None)[0][:, 0]  # MoE: its own module on (B, 1, D)
        cache.advance(1)
        if self.positions is not None:
            self.positions += 1
        return packed.lm_head(_norm(stack.norm, x))  # (B, V)


def supports_fast_decode(model: object) -> bool:
    """Whether `DecodeStep` can run this model (the compiled MiniMind layout)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    return layers is not None and all(isinstance(layer.self_attn, Attention) for layer in layers)
