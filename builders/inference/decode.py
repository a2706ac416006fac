"""The decode fast path: one new token per sequence through packed copies of the weights.

A batch-1 decode step is ~57 matrix-vector products over 1-13 MB weights plus ~150 small ops,
and on a CPU the kernels and the per-op overhead, not DRAM, set the pace. So at generation
time the model's weights are packed once into:

- per layer: one fused q/k/v weight (q_out + 2 kv_out, D), one o weight, one fused gate/up
  weight (2 hidden, D) and one down weight, and the head (V, D): 33 products per token, not 57;
- LoRA adapters that are present and not merged are folded into the packed copy (the
  model's own weights are untouched);
- each packed weight in the layout of the fastest kernel at hand (`packed_linear.PackedLinear`): on CPU,
  whichever of MKL's `torch.mm` on the transposed (in, out) weight and oneDNN's prepacked
  linear ran that shape faster when first packed in the process (oneDNN won on an AMD EPYC
  VM, MKL by 1.3x at fp32 on an Intel Xeon VM); `F.linear` on accelerators; or, with
  `quant="int8"`, per-row int8 weights and scales (`builders.inference.quant`, ~0.25x the
  bytes of fp32).

The pack is cached on the model as a plain attribute (not a parameter or buffer, so the
state dict and module tree do not change), one per (quant, kernel), together with a signature
of every parameter (storage pointer, version counter, dtype, device) and every adapter's
merged flag; any optimizer step, `load_state_dict`, `.to()`, merge or unmerge changes the
signature and the next generation repacks. `drop_packed_weights(model)` frees them.

`DecodeStep` runs the layers from a plan built once per generation (no per-token module
lookups): RMSNorm as one `rms_norm`, RoPE on q and k together in the training path's
`addcmul(x * cos, swap_halves(x), signed_sin)` form with the tables cast and signed once, the
o and down products added into the residual by one `addmm`. `compile=True` runs the same
function through `torch.compile` (Inductor fuses the norms, RoPE, cache writes and gating
into a few C++ kernels), with the cache length as the one dynamic dimension, read from the
additive mask's shape, so one graph serves every position and cache size.

Layers whose MLP is a mixture of experts run their MLP module as is (only attention is
packed); norms, attention backends and activations are the model's own modules and
functions, so the arithmetic is the plain path's up to the order of summation in matmuls
(fp32 logits agree to 1e-5; tests/builders/test_decode*.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import BACKENDS, Attention
from ..lora import Projection
from ..mlp import GatedMLP
from ..norm import RMSNorm
from ..positional import swap_halves
from ..cache import StaticKVCache
from .protocol import CausalLM
from .packed_linear import Kernel, PackedLinear
from .quant import Quant, check_quant

_ATTRIBUTE = "_packed_decode_weights"


def _effective_weight(projection: Projection) -> torch.Tensor:
    """The weight the projection applies: base plus the adapter's update when not merged."""
    weight = projection.dense_weight().detach()  # an NF4 base (QLoRA) dequantised
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
    quant: Quant = "none"

    def linears(self) -> list[PackedLinear]:
        found = [self.lm_head]
        for layer in self.layers:
            found += [linear for linear in (layer.qkv, layer.o, layer.gate_up, layer.down) if linear is not None]
        return found

    @property
    def nbytes(self) -> int:
        """Bytes of every packed weight (what a decode step streams, besides the embedding rows it gathers)."""
        return sum(linear.nbytes for linear in self.linears())


def _signature(model: CausalLM) -> tuple[object, ...]:
    params = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())
    merged = tuple(m.merged for m in model.modules() if isinstance(m, Projection) and m.lora is not None)
    return params, merged


def _head_weight(model: CausalLM) -> torch.Tensor:
    """The head's effective weight, trained token rows (LoRA trainable tokens) included."""
    weight = _effective_weight(model.lm_head)
    head_rows = getattr(model, "head_rows", None)  # MiniMindForCausalLM's; other CausalLMs have none
    rows = head_rows() if callable(head_rows) else None
    return weight if rows is None else rows.applied_to(weight).detach()


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
def _pack(model: CausalLM, signature: tuple[object, ...], quant: Quant, kernel: Kernel) -> PackedWeights:
    def linear(weight: torch.Tensor) -> PackedLinear:
        return PackedLinear(weight, quant, kernel)

    layers = []
    for layer in model.model.layers:
        parts = layer_parts(layer)
        attn = parts.attention
        qkv = torch.cat([_effective_weight(attn.q_proj), _effective_weight(attn.k_proj), _effective_weight(attn.v_proj)])
        gate_up = down = None
        if isinstance(parts.mlp, GatedMLP):
            mlp = parts.mlp
            gate_up = linear(torch.cat([_effective_weight(mlp.gate_proj), _effective_weight(mlp.up_proj)]))
            down = linear(_effective_weight(mlp.down_proj))
        layers.append(PackedLayer(qkv=linear(qkv), o=linear(_effective_weight(attn.o_proj)), gate_up=gate_up, down=down))
    return PackedWeights(layers=layers, lm_head=linear(_head_weight(model)), signature=signature, quant=quant)


class _PackSlot:
    """Holds a model's packs, one per (quant, kernel); copies and pickles of the model get an empty
    slot (a pack is derived data, and oneDNN's opaque tensors can be neither deep-copied nor pickled)."""

    def __init__(self) -> None:
        self.packs: dict[tuple[str, str], PackedWeights] = {}

    def __deepcopy__(self, memo: dict[int, object]) -> _PackSlot:
        return _PackSlot()

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return _PackSlot, ()


def packed_weights(model: CausalLM, quant: Quant = "none", *, kernel: Kernel = "auto") -> PackedWeights:
    """The model's packed decode weights, rebuilt when any parameter changed since the last pack.

    `quant="int8"`: every packed linear (fused q/k/v, o, fused gate/up, down, the head) as
    per-row int8 (`builders.inference.quant`); the model's own weights stay as they are.
    `kernel`: see `PackedLinear` ("mm" is the layout the compiled decode step traces).
    """
    quant = check_quant(quant)
    signature = _signature(model)
    slot = model.__dict__.setdefault(_ATTRIBUTE, _PackSlot())
    if any(pack.signature != signature for pack in slot.packs.values()):
        slot.packs.clear()  # free the stale packs before building the new one
    key = (quant, kernel)
    if key not in slot.packs:
        slot.packs[key] = _pack(model, signature, quant, kernel)
    return slot.packs[key]


def drop_packed_weights(model: CausalLM) -> None:
    """Free the packed copies (they are rebuilt by the next generation that wants one)."""
    model.__dict__.pop(_ATTRIBUTE, None)


def _norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's norm on x (B, D): RMSNorm's arithmetic without the module call, else the module."""
    if type(module) is RMSNorm:
        if x.dtype == torch.float32:  # weight * normed, both fp32: the same products inside rms_norm
            return F.rms_norm(x, (module.dim,), module.weight, module.eps)
        return module.weight * F.rms_norm(x.float(), (module.dim,), eps=module.eps).to(x.dtype)
    return module(x)


@dataclass(frozen=True)
class _LayerPlan:
    """One decoder layer as the step runs it, looked up once per generation, not once per token."""

    parts: LayerParts
    weights: PackedLayer
    n_heads: int
    n_kv_heads: int
    head_dim: int
    attend: Callable[..., torch.Tensor]  # the layer's attention backend
    keys: torch.Tensor  # (B, Hkv, max_length, d) this layer's cache buffers
    values: torch.Tensor
    gated: GatedMLP | None  # the dense MLP (its packed gate/up and down run), or None: the module runs (MoE)


def _run_layers(layers: list[_LayerPlan], final_norm: nn.Module, head: PackedLinear, x: torch.Tensor,
                cos: torch.Tensor | None, sin: torch.Tensor | None, mask: torch.Tensor | None,
                length: int) -> torch.Tensor:
    # x: (B, D) this step's embedded tokens; cos/sin: (B|1, 1, d) or None; mask: (B, 1, 1, length) additive
    # or None; length: the keys attended, this token's included (it is written at length - 1) -> logits (B, V)
    B = x.shape[0]
    upcast = x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)
    for plan in layers:
        H, Hkv, d, weights, attn = plan.n_heads, plan.n_kv_heads, plan.head_dim, plan.weights, plan.parts.attention
        qkv = weights.qkv(_norm(plan.parts.input_norm, x))  # (B, (H + 2 Hkv) d)
        qk = qkv[:, :(H + Hkv) * d].view(B, H + Hkv, d)
        if attn.q_norm is not None and attn.k_norm is not None:  # QK-norm, per head, before RoPE
            qk = torch.cat([attn.q_norm(qk[:, :H]), attn.k_norm(qk[:, H:])], dim=1)  # (B, H + Hkv, d)
        if cos is not None and sin is not None:  # q and k rotated together; sin carries rotate_half's sign
            qk = torch.addcmul(qk * cos, swap_halves(qk), sin)  # (B, H + Hkv, d)
        v = qkv[:, (H + Hkv) * d:].view(B, Hkv, d)
        plan.keys.narrow(2, length - 1, 1).copy_(qk[:, H:, None])
        plan.values.narrow(2, length - 1, 1).copy_(v[:, :, None])
        keys, values = plan.keys.narrow(2, 0, length), plan.values.narrow(2, 0, length)  # (B, Hkv, S, d)
        q = qk[:, :H, None]  # (B, H, 1, d)
        if upcast:  # bf16/fp16 SDPA on a CPU without bf16 dot products: 68 us at 150 keys, 38 us in fp32
            out = plan.attend(q.float(), keys.float(), values.float(), mask, 0.0, False).to(x.dtype)  # (B, H, 1, d)
        else:
            out = plan.attend(q, keys, values, mask, 0.0, False)  # (B, H, 1, d)
        x = weights.o.add(x, out.view(B, H * d))  # (B, D)
        h = _norm(plan.parts.post_attention_norm, x)  # (B, D)
        if plan.gated is not None and weights.gate_up is not None and weights.down is not None:
            gate_up = weights.gate_up(h)  # (B, 2 hidden)
            hidden = gate_up.shape[1] // 2
            x = weights.down.add(x, plan.gated.act_fn(gate_up[:, :hidden]).mul_(gate_up[:, hidden:]))  # (B, D)
        else:
            x = x + plan.parts.mlp(h[:, None], None)[0][:, 0]  # MoE: its own module on (B, 1, D)
    return head(_norm(final_norm, x))  # (B, V)


def _run_masked_layers(layers: list[_LayerPlan], final_norm: nn.Module, head: PackedLinear, x: torch.Tensor,
                       cos: torch.Tensor | None, sin: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """`_run_layers` with the key length read from the mask's last (dynamic) dimension: the form
    `torch.compile` traces once for every cache length instead of once per position."""
    return _run_layers(layers, final_norm, head, x, cos, sin, mask, mask.shape[-1])


@functools.cache
def _compiled_layers() -> Callable[..., torch.Tensor]:
    """The decode step's layers through torch.compile (Inductor): one compiled graph, built at
    the first compiled step and reused by every later generation with the same model and shapes."""
    return torch.compile(_run_masked_layers)


class DecodeStep:
    """Runs one token per sequence through the packed weights, writing the static cache.

    Built after the prefill: `cache` holds the prompt, `attention_mask` (B, T + N) covers the
    prompt (zeros where left-padded) and every position to be generated (ones).
    `quant="int8"` runs the int8 pack (`packed_weights`); `compile=True` runs the layers through
    `torch.compile` with the cache length as the one dynamic dimension (the first compiled step
    of a process pays the compilation: 10-20 s for the card's spec on 2 CPU cores, a few seconds
    when Inductor's on-disk cache already holds the kernels; a new batch size or dtype compiles again).
    """

    def __init__(self, model: CausalLM, cache: StaticKVCache, attention_mask: torch.Tensor | None, *,
                 quant: Quant = "none", compile: bool = False) -> None:
        self.model = model
        self.cache = cache
        self.compile = compile
        self.packed = packed_weights(model, quant, kernel="mm" if compile else "auto")
        stack = model.model
        self.embed_tokens = stack.embed_tokens
        self.embed_positions = stack.embed_positions
        dtype = stack.embed_tokens.weight.dtype
        self.cos = self.sin = None  # (P, d) in the model's dtype; sin's first half negated (rotate_half's sign)
        if stack.rotary_emb is not None:
            sin = stack.rotary_emb.sin_table.to(dtype)
            half = sin.shape[-1] // 2
            self.cos = stack.rotary_emb.cos_table.to(dtype)
            self.sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        self.additive_mask = None  # (B, 1, 1, T + N): 0 where a key may be attended, the dtype's minimum elsewhere
        self.positions = None  # (B,) next RoPE/absolute position per row when left-padded
        if attention_mask is not None:
            allowed = attention_mask.bool()[:, None, None, :]
            self.additive_mask = torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device),
                                             torch.finfo(dtype).min)
            self.positions = attention_mask[:, :cache.length].long().sum(-1)  # (B,) real tokens seen so far
        elif compile:  # all zeros: the compiled layers read the key length from the mask's shape
            self.additive_mask = torch.zeros(cache.batch_size, 1, 1, cache.max_length, dtype=dtype,
                                             device=stack.embed_tokens.weight.device)
        if compile:  # one graph for every cache size, not one per generation length
            for buffer in (*cache.keys, *cache.values):
                torch._dynamo.maybe_mark_dynamic(buffer, 2)
        self.layers = []
        for layer, weights, keys, values in zip(stack.layers, self.packed.layers, cache.keys, cache.values):
            parts = layer_parts(layer)
            attn = parts.attention
            gated = parts.mlp if isinstance(parts.mlp, GatedMLP) and weights.gate_up is not None else None
            self.layers.append(_LayerPlan(parts=parts, weights=weights, n_heads=attn.n_heads, n_kv_heads=attn.n_kv_heads,
                                          head_dim=attn.head_dim, attend=BACKENDS[attn.backend], keys=keys,
                                          values=values, gated=gated))

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        # token: (B,) the newest token of each row -> logits (B, V) for the next one
        cache = self.cache
        offset = cache.length
        if offset >= cache.max_length:
            raise ValueError(f"KV cache is full: {offset + 1} positions needed, {cache.max_length} allocated")
        position: torch.Tensor | slice = slice(offset, offset + 1) if self.positions is None else self.positions
        x = self.embed_tokens(token)  # (B, D)
        if self.embed_positions is not None:
            x = x + self.embed_positions.weight[position]  # (B|1, D)
        cos = sin = None
        if self.cos is not None and self.sin is not None:
            cos, sin = self.cos[position][:, None], self.sin[position][:, None]  # (B|1, 1, d)
        mask = self.additive_mask[..., :offset + 1] if self.additive_mask is not None else None  # (B, 1, 1, S)
        final_norm, head = self.model.model.norm, self.packed.lm_head
        if self.compile and mask is not None:
            torch._dynamo.maybe_mark_dynamic(mask, 3)
            logits = _compiled_layers()(self.layers, final_norm, head, x, cos, sin, mask)
        else:
            logits = _run_layers(self.layers, final_norm, head, x, cos, sin, mask, offset + 1)
        cache.advance(1)
        if self.positions is not None:
            self.positions += 1
        return logits  # (B, V)


def supports_fast_decode(model: object) -> bool:
    """Whether `DecodeStep` can run this model (the compiled MiniMind layout)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    return layers is not None and all(isinstance(layer.self_attn, Attention) for layer in layers)
