"""Spec sections that describe the network itself: backbone, hyperparams, io, modules, MoE.

Field names and closed choices follow the design card; fields the card implies but does not
spell out (n_kv_heads, rope_theta, rope_scaling, norm_eps, tie_word_embeddings, the MoE
section) carry documented defaults.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .base import NonEmptyStr, NonNegativeInt, PositiveFloat, PositiveInt, Probability, SpecModel

MAX_POSITIONS = 16_777_216  # longest context a spec may ask for (2^24 positions)
MAX_VOCAB = 16_777_216  # largest vocabulary (2^24)

Variant = Literal["MoE", "Flash Attention"]
AttentionBackend = Literal["auto", "flash-attn2", "sdpa", "eager"]


class Backbone(SpecModel):
    type: Literal["Transformer-Decoder-Only"] = Field(description="Network family; only decoder-only transformers compile.")
    variants: list[Variant] = Field(
        default=[],
        description="Optional variants this spec can be built as (`--variant`). The base build is the dense model; "
        "'MoE' swaps every MLP for a mixture of experts, 'Flash Attention' forces the flash-attn2 backend.",
    )
    build_variant: Variant | None = Field(
        default=None,
        description="Variant built when none is named on the command line (must be one of `variants`). "
        "Default: none, the base (dense) build.",
    )
    positional_encoding: Literal["RoPE", "Absolute"] = Field(
        description="RoPE (rotary, no parameters) or Absolute (learned position embeddings added to the tokens)."
    )
    norm: Literal["RMSNorm", "LayerNorm"] = Field(description="Normalisation used before attention, before the MLP, and at the end.")
    activation: Literal["SiLU", "GELU", "ReLU"] = Field(
        description="Activation of the gated MLP: SiLU gives SwiGLU, GELU gives GeGLU, ReLU gives ReGLU."
    )
    attention_backend: AttentionBackend = Field(
        default="auto",
        description="Attention kernel. 'auto' uses flash-attn2 when the Flash Attention variant is built or the "
        "flash-attn2 trick is listed and the package imports on a CUDA fp16/bf16 run, else PyTorch SDPA.",
    )


class TensorSpec(SpecModel):
    modalities: list[Literal["text"]] = Field(default=["text"], min_length=1, description="Input modalities; text only.")
    shapes: list[NonEmptyStr] = Field(default=[], description="Declared input shapes, e.g. '(B, seq_len)'; checked against the graph.")


class OutputSpec(SpecModel):
    types: list[Literal["logits"]] = Field(default=["logits"], min_length=1, description="Output kinds; logits only.")
    shapes: list[NonEmptyStr] = Field(default=[], description="Declared output shapes, e.g. '(B, seq_len, vocab_size)'; checked against the graph.")


class IO(SpecModel):
    input_spec: TensorSpec = Field(default_factory=TensorSpec, description="What the model takes.")
    output_spec: OutputSpec = Field(default_factory=OutputSpec, description="What the model returns.")


class DeclaredModule(SpecModel):
    name: NonEmptyStr = Field(description="Display name of the module, e.g. 'Attention'.")
    type: NonEmptyStr = Field(
        description="What the module is, e.g. 'Token Embedding', 'Multi-Head Self-Attention', "
        "'FeedForward/Mixture-of-Experts', 'Linear Projection'. Used to match it to graph nodes."
    )
    params: NonNegativeInt | None = Field(default=None, description="Declared parameter count (per layer for per-layer modules). Checked, never trusted.")
    in_shape: NonEmptyStr | None = Field(default=None, description="Declared input shape; checked against the graph.")
    out_shape: NonEmptyStr | None = Field(default=None, description="Declared output shape; checked against the graph.")
    connections: list[NonEmptyStr] = Field(default=[], description="Free-form wiring notes such as 'input->this'.")
    notes: str = Field(default="", description="Free-form notes.")


class NoRopeScaling(SpecModel):
    type: Literal["none"] = Field(description="No scaling.")


class LinearRopeScaling(SpecModel):
    type: Literal["linear"] = Field(description="Position interpolation: positions divided by `factor`.")
    factor: Annotated[float, Field(ge=1.0, le=1024.0)] = Field(description="Context extension factor (1 to 1024).")


class NtkRopeScaling(SpecModel):
    type: Literal["ntk"] = Field(description="NTK-aware scaling: theta multiplied by factor^(dim/(dim-2)).")
    factor: Annotated[float, Field(ge=1.0, le=1024.0)] = Field(description="Context extension factor (1 to 1024).")


class YarnRopeScaling(SpecModel):
    type: Literal["yarn"] = Field(description="YaRN: per-frequency blend of interpolation and extrapolation, plus attention scaling.")
    factor: Annotated[float, Field(ge=1.0, le=1024.0)] = Field(description="Context extension factor (1 to 1024).")
    original_max_position_embeddings: PositiveInt | None = Field(
        default=None, description="Context length the model was trained at; default hyperparams.seq_len."
    )
    beta_fast: PositiveFloat = Field(default=32.0, description="Rotations above which a dimension is extrapolated (YaRN beta).")
    beta_slow: PositiveFloat = Field(default=1.0, description="Rotations below which a dimension is interpolated (YaRN alpha).")
    attention_factor: PositiveFloat | None = Field(default=None, description="Scale of cos/sin; default 0.1*ln(factor)+1.")


RopeScaling = Annotated[
    NoRopeScaling | LinearRopeScaling | NtkRopeScaling | YarnRopeScaling, Field(discriminator="type")
]


class Hyperparams(SpecModel):
    d_model: Annotated[int, Field(gt=0, le=65536)] = Field(description="Hidden size of the residual stream (at most 65536).")
    n_layers: Annotated[int, Field(gt=0, le=4096)] = Field(description="Number of decoder layers (at most 4096).")
    n_heads: Annotated[int, Field(gt=0, le=4096)] = Field(description="Number of query heads; must divide d_model unless head_dim is given.")
    n_kv_heads: PositiveInt | None = Field(default=None, description="Key/value heads (GQA); must divide n_heads. Default: n_heads (multi-head attention).")
    head_dim: Annotated[int, Field(gt=0, le=65536)] | None = Field(
        default=None, description="Width of each attention head. Default d_model / n_heads; MiniMind-3 and Qwen3 may set it apart "
        "(the q/k/v projections are then n_heads x head_dim wide).")
    qk_norm: bool = Field(default=False, description="Normalise each head's queries and keys with an RMSNorm (weights of "
                          "head_dim) after the projections and before RoPE, as MiniMind-3 and Qwen3 do.")
    mlp_ratio: PositiveFloat | None = Field(default=None, description="MLP hidden size as a multiple of d_model (hidden = mlp_ratio x d_model). "
                                            "Give it or mlp_hidden; when both are given they must agree.")
    mlp_hidden: Annotated[int, Field(gt=0, le=1_048_576)] | None = Field(
        default=None, description="MLP hidden size in units, e.g. 2432 (MiniMind-3: ceil(d_model x pi / 64) x 64). "
        "Give it or mlp_ratio; when both are given they must agree.")
    dropout: Probability = Field(default=0.0, description="Dropout on attention weights and residual branches.")
    sd_prob: Probability = Field(default=0.0, description="Stochastic-depth probability of dropping a residual branch.")
    kernel: None = Field(default=None, description="Convolution kernel; applies to convolutional backbones only, must be null here.")
    stride: None = Field(default=None, description="Convolution stride; applies to convolutional backbones only, must be null here.")
    patch: None = Field(default=None, description="Patch size; applies to vision backbones only, must be null here.")
    seq_len: Annotated[int, Field(gt=0, le=1_048_576)] = Field(description="Training context length in tokens (at most 2^20).")
    vocab: Annotated[int, Field(gt=0, le=MAX_VOCAB)] = Field(description="Vocabulary size (at most 2^24).")
    rope_theta: PositiveFloat = Field(default=1_000_000.0, description="RoPE base frequency. Default 1e6, as MiniMind uses.")
    rope_scaling: RopeScaling | None = Field(default=None, description="RoPE context scaling: null/none, linear, ntk or yarn.")
    norm_eps: PositiveFloat = Field(default=1e-5, description="Epsilon of every norm. Default 1e-5, as MiniMind uses.")
    tie_word_embeddings: bool = Field(default=True, description="Share the lm_head weight with the token embedding. Default true, as MiniMind does.")
    max_position_embeddings: Annotated[int, Field(gt=0, le=MAX_POSITIONS)] | None = Field(
        default=None, description="Longest sequence the model accepts (at most 2^24). Default seq_len times the RoPE scaling factor."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="bfloat16", description="Compute dtype of training and of the KV cache; used for memory figures."
    )

    @property
    def attention_head_dim(self) -> int:
        """The width of each head: head_dim when given, else d_model / n_heads (rounded down)."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def mlp_width(self) -> int | None:
        """The MLP hidden size: mlp_hidden when given, else mlp_ratio x d_model rounded; None when neither is given."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return round(self.mlp_ratio * self.d_model) if self.mlp_ratio is not None else None


class MoE(SpecModel):
    num_experts: Annotated[int, Field(gt=0, le=1024)] = Field(default=8, description="Routed experts per MoE layer (at most 1024). Default 8, as the card's notes and graph say.")
    top_k: PositiveInt = Field(default=2, description="Experts each token is routed to; at most num_experts.")
    aux_loss: bool | None = Field(
        default=None, description="Add the load-balancing auxiliary loss. Default: on when tricks lists 'moe-aux-loss'."
    )
    aux_loss_weight: Annotated[float, Field(ge=0.0)] = Field(default=0.01, description="Weight of the auxiliary loss (MiniMind's aux_loss_alpha).")
    num_shared_experts: Annotated[int, Field(ge=0, le=64)] = Field(default=0, description="Always-on experts added to every token's output (at most 64).")
    norm_topk_prob: bool = Field(default=True, description="Renormalise the top-k routing weights to sum to one (default: true for top_k >= 2, "
                                 "false for top_k 1, whose single weight would always be 1; MiniMind-3 sets it with top_k 1, "
                                 "accepted with a warning: its router then learns from the aux loss alone).")
    expert_hidden: PositiveInt | None = Field(default=None, description="Hidden size of each expert. Default: the dense MLP hidden size.")
