"""MiniMindForCausalLM: the decoder stack the compiler assembles from built submodules.

Layout and state-dict names follow Hugging Face Llama/Qwen:
    model.embed_tokens, [model.embed_positions], model.rotary_emb,
    model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp},
    model.norm, lm_head (sharing model.embed_tokens.weight when tied).
The forward pass is plain PyTorch (no graph interpreter), so it runs under torch.compile.
It returns logits (and, on request, every layer's hidden states), the MoE aux loss and the
expert counts; objectives (`builders.techniques`) turn those into losses. `labels=` computes
the plain causal-LM loss for convenience, as Hugging Face models do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attention import Attention, build_attention_mask, flash_unavailable
from .cache import StaticKVCache
from .inference.generate import generate
from .lora import LoRAAdapter, Projection, lora_state_dict, merge_lora, unmerge_lora
from .token_rows import TokenRows, reset_token_rows
from .mlp import GatedMLP
from .moe import MoE
from .norm import LayerNorm, RMSNorm
from .packing import PackedRows
from .positional import LearnedPositionEmbedding, RotaryEmbedding
from .techniques.causal_lm import causal_lm_loss


@dataclass
class CausalLMOutput:
    """logits (B, T', V); aux_loss: the weighted MoE balance loss summed over layers (0 for
    dense; add it to the objective when training); expert_counts: tokens per expert in this
    forward, (MoE layers, E), None for dense; hidden_states: with `output_hidden_states`,
    n_layers + 1 tensors (B, T, D) as Hugging Face returns them (the embeddings, each layer's
    output, the last one after the final norm); loss: the causal-LM loss when `labels` were
    given; past_key_values: the cache when `use_cache`."""

    logits: torch.Tensor
    aux_loss: torch.Tensor
    expert_counts: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    loss: torch.Tensor | None = None
    past_key_values: StaticKVCache | None = None


class DecoderLayer(nn.Module):
    """Pre-norm block: x + drop(attn(norm(x))), then x + drop(mlp(norm(x))), with stochastic depth."""

    def __init__(self, *, input_layernorm: nn.Module, self_attn: Attention, post_attention_layernorm: nn.Module,
                 mlp: GatedMLP | MoE, dropout: float, sd_prob: float, layer_index: int) -> None:
        super().__init__()
        self.input_layernorm = input_layernorm
        self.self_attn = self_attn
        self.post_attention_layernorm = post_attention_layernorm
        self.mlp = mlp
        self.residual_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.sd_prob = sd_prob
        self.layer_index = layer_index

    def _branch(self, y: torch.Tensor) -> torch.Tensor:
        # y: (B, T, D) residual branch -> dropped out and, in training, dropped per sample with prob sd_prob
        y = self.residual_dropout(y)
        if self.training and self.sd_prob > 0:
            keep = torch.rand(y.shape[0], 1, 1, device=y.device) >= self.sd_prob  # (B, 1, 1)
            y = y * keep.to(y.dtype) / (1.0 - self.sd_prob)
        return y

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None, mask: torch.Tensor | None,
                cache: StaticKVCache | None, offset: int, token_mask: torch.Tensor | None,
                packed: PackedRows | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        # x: (B, T, D) -> (B, T, D), aux loss () or None
        x = x + self._branch(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, self.layer_index, offset, packed))
        h = self.post_attention_layernorm(x)  # (B, T, D)
        aux = None
        if isinstance(self.mlp, MoE):
            h, aux = self.mlp(h, token_mask)
        else:
            h = self.mlp(h)
        return x + self._branch(h), aux


class MiniMindModel(nn.Module):
    """Embeddings, decoder layers and the final norm (the Hugging Face `model.` prefix)."""

    def __init__(self, *, embed_tokens: nn.Embedding, layers: list[DecoderLayer], norm: nn.Module,
                 rotary_emb: RotaryEmbedding | None = None, embed_positions: LearnedPositionEmbedding | None = None) -> None:
        super().__init__()
        if (rotary_emb is None) == (embed_positions is None):
            raise ValueError("exactly one of rotary_emb and embed_positions is required")
        self.embed_tokens = embed_tokens
        self.embed_positions = embed_positions
        self.rotary_emb = rotary_emb
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    @property
    def decoder_layers(self) -> list[DecoderLayer]:
        """The layers, typed (a ModuleList's items are plain modules to a type checker)."""
        return [layer for layer in self.layers if isinstance(layer, DecoderLayer)]

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor | None,
                cache: StaticKVCache | None, offset: int, token_mask: torch.Tensor | None,
                hidden_states: list[torch.Tensor] | None = None,
                packed: PackedRows | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        # input_ids: (B, T), position_ids: (B, T) or (T,) -> normed hidden (B, T, D), summed aux loss () or None;
        # appends each layer's input (B, T, D) and the normed output to `hidden_states` when given
        x = self.embed_tokens(input_ids)  # (B, T, D)
        cos = sin = None
        if self.rotary_emb is not None:
            cos, sin = self.rotary_emb(position_ids)  # (B|1, 1, T, d)
        else:
            assert self.embed_positions is not None
            x = x + self.embed_positions(position_ids)  # (B, T, D)
        aux_total = None
        for layer in self.decoder_layers:
            if hidden_states is not None:
                hidden_states.append(x)
            x, aux = layer(x, cos, sin, mask, cache, offset, token_mask, packed)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        x = self.norm(x)  # (B, T, D)
        if hidden_states is not None:
            hidden_states.append(x)
        return x, aux_total


class MiniMindForCausalLM(nn.Module):
    """The compiled language model: `model` (the stack) and `lm_head` (tied or not)."""

    def __init__(self, *, model: MiniMindModel, lm_head: Projection, tie_word_embeddings: bool, n_kv_heads: int,
                 head_dim: int, max_position_embeddings: int) -> None:
        super().__init__()
        self.model = model
        self.lm_head = lm_head
        self.tie_word_embeddings = tie_word_embeddings
        self.n_kv_heads = n_kv_heads
        self.head_dim = head_dim
        self.max_position_embeddings = max_position_embeddings
        self.tie_weights()

    # How to write this model with its config: set by the engine that compiled it from a spec
    # (builders know no spec, so the writer comes from outside); see `save_pretrained`.
    pretrained_writer: Callable[[nn.Module, Path], list[Path]] | None = None

    def save_pretrained(self, directory: str | Path) -> list[Path]:
        """Write config.json and model.safetensors (tied weights once) into `directory`, each file
        whole or not at all; `minimind_spec.engine.from_pretrained(directory)` reads it back."""
        if self.pretrained_writer is None:
            raise RuntimeError("this model was not compiled from a spec (minimind_spec.engine.compile_model), "
                               "so nothing records its config")
        return self.pretrained_writer(self, Path(directory))

    def tie_weights(self) -> None:
        """Share `lm_head.weight` with the token embedding when the spec ties them."""
        if self.tie_word_embeddings:
            shared = self.model.embed_tokens.weight
            assert isinstance(shared, nn.Parameter)  # typed as a Tensor by nn.Embedding
            self.lm_head.weight = shared

    def head_rows(self) -> TokenRows | None:
        """The head's trainable token rows: its own when untied, the embedding's when tied (None: none)."""
        rows = getattr(self.model.embed_tokens, "token_rows", None) if self.tie_word_embeddings \
            else getattr(self.lm_head, "token_rows", None)
        return rows if isinstance(rows, TokenRows) else None

    def head_weight(self) -> torch.Tensor:
        """The weight the head applies (vocab, D), trained token rows included."""
        weight = self.lm_head.weight
        rows = self.head_rows()
        return weight if rows is None else rows.applied_to(weight)

    @property
    def vocab_size(self) -> int:
        return self.model.embed_tokens.num_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                past_key_values: StaticKVCache | None = None, use_cache: bool = False, position_ids: torch.Tensor | None = None,
                logits_to_keep: int = 0, output_hidden_states: bool = False, packed: PackedRows | None = None) -> CausalLMOutput:
        # input_ids: (B, T); attention_mask: (B, offset + T) 1 = token, 0 = padding; labels: (B, T) aligned with input_ids;
        # packed: sample boundaries of packed rows (each sample attends to itself only, its positions from 0)
        B, T = input_ids.shape
        if packed is not None and (past_key_values is not None or use_cache):
            raise ValueError("packed rows are for training and scoring: no KV cache")
        cache = past_key_values
        if cache is None and use_cache:
            cache = self.new_cache(B, self.max_position_embeddings)
        offset = cache.length if cache is not None else 0
        if offset + T > self.max_position_embeddings:  # python ints: no graph break under torch.compile
            raise ValueError(f"{offset} + {T} tokens exceed max_position_embeddings ({self.max_position_embeddings})")
        if packed is not None:
            position_ids = packed.position_ids  # (B, T), restarting at 0 per sample
        elif position_ids is None:
            if attention_mask is not None:  # left padding: count only real tokens
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # (B, T)
            else:
                position_ids = torch.arange(offset, offset + T, device=input_ids.device)  # (T,)
        dtype = self.model.embed_tokens.weight.dtype
        if torch.is_autocast_enabled(input_ids.device.type):
            dtype = torch.get_autocast_dtype(input_ids.device.type)
        if packed is None:
            mask = build_attention_mask(attention_mask, T, offset + T, offset, dtype)  # (B|1, 1, T, S) or None
        elif self._varlen_kernel(input_ids.device.type, dtype):
            mask = None  # flash-attn's variable-length kernel takes the boundaries themselves
        else:
            mask = packed.attention_mask(dtype, attention_mask)  # (B, 1, T, T) block-diagonal causal
        token_mask = attention_mask[:, -T:] if attention_mask is not None else None  # (B, T)
        all_hidden: list[torch.Tensor] | None = [] if output_hidden_states else None
        hidden, aux = self.model(input_ids, position_ids, mask, cache, offset, token_mask, all_hidden, packed)  # (B, T, D)
        if cache is not None:
            cache.advance(T)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]  # (B, T', D)
        logits = self.lm_head(hidden)  # (B, T', V)
        rows = self.head_rows()
        if rows is not None:  # trainable token rows (LoRA): those tokens' logits from their trained rows
            logits = rows.replace_logits(hidden, logits)  # (B, T', V)
        if aux is None:
            aux = logits.new_zeros((), dtype=torch.float32)
        counts = None
        moe_layers = [layer.mlp for layer in self.model.decoder_layers if isinstance(layer.mlp, MoE)]
        if moe_layers:
            counts = torch.stack([moe.expert_counts for moe in moe_layers])  # (MoE layers, E)
        return CausalLMOutput(
            logits=logits, aux_loss=aux, expert_counts=counts,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            loss=causal_lm_loss(logits, labels) if labels is not None else None,
            past_key_values=cache if use_cache else None,
        )

    def _varlen_kernel(self, device_type: str, dtype: torch.dtype) -> bool:
        """True when every layer's attention takes packed rows through flash-attn's variable-length kernel."""
        layers = [layer.self_attn for layer in self.model.decoder_layers]
        return all(attn.backend == "flash-attn2" for attn in layers) and flash_unavailable(device_type, dtype) is None

    def new_cache(self, batch_size: int, max_length: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> StaticKVCache:
        """A static cache for this model, on its device and in its dtype unless given."""
        weight = self.model.embed_tokens.weight
        return StaticKVCache(n_layers=len(self.model.layers), batch_size=batch_size, n_kv_heads=self.n_kv_heads,
                             max_length=max_length, head_dim=self.head_dim, device=device or weight.device,
                             dtype=dtype or weight.dtype)

    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """See `builders.inference.generate`."""
        return generate(self, input_ids, **kwargs)

    def merge_lora(self) -> int:
        return merge_lora(self)

    def unmerge_lora(self) -> int:
        return unmerge_lora(self)

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        return lora_state_dict(self)

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02, generator: torch.Generator | None = None) -> None:
        """Initialise as MiniMind / Llama do: normal(0, std) for every weight matrix and
        embedding, norms at one (and zero bias), LoRA A normal and B zero, token rows copied from
        the rows they replace; RoPE tables recomputed."""
        for module in self.modules():
            if isinstance(module, (LoRAAdapter, TokenRows)):
                module.reset_parameters(std, generator)
            elif isinstance(module, RotaryEmbedding):
                module.reset_tables()
            elif isinstance(module, MoE):
                module.expert_counts.zero_()
            elif isinstance(module, (RMSNorm, LayerNorm)):
                module.reset_parameters()
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, (LoRAAdapter, TokenRows)) or param.dim() < 2:
                    continue
                if module is self.lm_head and self.tie_word_embeddings:
                    continue
                param.normal_(0.0, std, generator=generator)
        reset_token_rows(self)  # fresh token rows are the base's own: the model computes as its base
