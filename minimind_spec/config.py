"""The typed, concrete configuration a spec resolves to: what flows down the pipeline.

`resolve.resolve` fills these from a `Spec`; the graph builder reads `ModelConfig`, and the
graph (not this config) is what the compiler reads. Every field is required: each value was
decided, and recorded with its provenance, by the resolver (or read back from an exported
config.json by the engine).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import Problem
from .rewards import RewardRule
from .schema import ProjectionName, Spec

AttentionBackendName = Literal["flash-attn2", "sdpa", "eager"]


@dataclass(frozen=True)
class RopeConfig:
    """RoPE scaling: kind 'none' | 'linear' | 'ntk' | 'yarn' and its concrete parameters."""

    kind: Literal["none", "linear", "ntk", "yarn"]
    factor: float
    original_max_position_embeddings: int
    beta_fast: float
    beta_slow: float
    attention_factor: float


@dataclass(frozen=True)
class MoEConfig:
    """Mixture of experts in every layer (the MoE variant)."""

    num_experts: int
    top_k: int
    aux_loss: bool
    aux_loss_weight: float
    num_shared_experts: int
    norm_topk_prob: bool
    expert_hidden: int


@dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters on the named projections of every layer."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[ProjectionName, ...]  # e.g. ("q_proj", "v_proj")
    trainable_tokens: tuple[int, ...] = ()  # token ids whose embedding (and untied head) rows train (PEFT trainable tokens)
    modules_to_save: tuple[str, ...] = ()  # whole modules that train and are saved with the adapters (PEFT's rule: name suffix)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build the network, flat and concrete."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    qk_norm: bool  # per-head RMSNorm of queries and keys before RoPE (MiniMind-3, Qwen3)
    mlp_hidden: int
    activation: Literal["SiLU", "GELU", "ReLU"]
    norm: Literal["RMSNorm", "LayerNorm"]
    norm_eps: float
    positional_encoding: Literal["RoPE", "Absolute"]
    rope_theta: float
    rope_scaling: RopeConfig
    max_position_embeddings: int
    seq_len: int
    dropout: float
    sd_prob: float
    tie_word_embeddings: bool
    attention_backend: AttentionBackendName  # preferred; flash-attn2 falls back to sdpa where it cannot run
    moe: MoEConfig | None  # None: dense SwiGLU MLP in every layer
    lora: LoRAConfig | None  # None: no adapters
    dtype: Literal["float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, schedule and the regularisation applied at every step."""

    optimizer: Literal["AdamW", "Adam", "SGD"]
    lr: float  # peak learning rate
    betas: tuple[float, float]
    weight_decay: float  # decoupled; never applied to norms and embeddings
    scheduler: Literal["cosine", "linear", "constant"]
    warmup: int  # linear warmup steps
    min_lr_ratio: float  # the decay ends at this share of the peak
    max_steps: int | None  # None: the epochs decide
    batch_size: int  # sequences per optimizer step
    grad_clip: float | None  # global gradient-norm clip; None disables
    label_smoothing: float


@dataclass(frozen=True)
class StageSettings:
    """One stage's schedule and batch, each value from `techniques.<stage>`, else the global section
    (optim, regularization, hyperparams.seq_len), else the stage's recipe (`stages.STAGES`), else the
    global default; provenance under `training.stages.<stage>.<field>`."""

    lr: float  # peak learning rate
    min_lr_ratio: float
    warmup: int
    batch_size: int  # sequences (DPO: pairs) per optimizer step
    micro_batch: int | None  # sequences per forward; None: each process's whole share of the batch
    epochs: int
    max_steps: int | None  # None: the epochs decide
    seq_len: int
    weight_decay: float
    grad_clip: float | None


@dataclass(frozen=True)
class SFTConfig:
    enabled: bool
    datasets: tuple[str, ...]


@dataclass(frozen=True)
class DPOConfig:
    enabled: bool
    beta: float
    reference_model: str  # 'base_model': the stage's frozen input model
    pair_source: str
    loss: Literal["sigmoid", "hinge", "ipo"]
    rpo_alpha: float  # weight of the chosen response's per-token NLL; 0: plain DPO
    length_normalized: bool  # per-token mean log-probs (always for IPO)
    stop_on_collapse: bool  # the DPO watch ends the stage on collapse or divergence


@dataclass(frozen=True)
class DistillConfig:
    enabled: bool
    kind: Literal["logit", "hidden"]
    teacher: str
    teacher_spec: Path | None  # the teacher's spec file, when distillation is on and it was found
    loss: Literal["KL", "reverse_KL", "MSE"]
    temperature: float
    alpha: float  # weight of the hard-label CE; the teacher term weighs 1 - alpha
    layers: tuple[int, ...]
    reasoning_token_masking: bool
    reasoning_token_weight: float


@dataclass(frozen=True)
class GRPOConfig:
    """GRPO with verifiable rewards: sampling, the loss and the reward rules (`rewards.py`)."""

    enabled: bool
    num_generations: int  # completions per prompt: one group
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    thinking: bool  # the generation prompt opens a <think> block
    beta: float  # weight of the k3 KL to the reference per completion token
    loss: Literal["grpo", "cispo"]
    clip_eps: float
    cispo_max_weight: float
    std_eps: float
    rewards: tuple[RewardRule, ...]


@dataclass(frozen=True)
class TrainingConfig:
    """How the spec says to train: the optimizer and each technique's settings."""

    optim: OptimConfig  # the global values, as the spec (or the command line) sets them
    stages: dict[str, StageSettings]  # what each stage kind runs with, by its name (stages.StageKind)
    document_mask: bool  # pretraining rows isolate their documents
    sft: SFTConfig
    dpo: DPOConfig
    distill: DistillConfig
    grpo: GRPOConfig
    quant: QuantConfig | None  # None: the base stays at full precision in every stage


@dataclass(frozen=True)
class QuantConfig:
    """QLoRA (`techniques.quant`): in each stage that trains only LoRA adapters, the frozen base's
    decoder projections (q/k/v/o/gate/up/down, experts included) are stored in NF4 and dequantised
    on the fly; embeddings, norms, the router and the head stay at full precision. It changes how the
    base is held while training, not what the weights mean: `weight_values` does not include it."""

    scheme: Literal["nf4"]
    where: tuple[Literal["base"], ...]


@dataclass(frozen=True)
class TrainingOverrides:
    """Values given on the command line; each wins over the spec and is recorded as `cli: --flag`.
    The schedule and batch values apply to every stage of the run."""

    lr: float | None = None
    micro_batch: int | None = None
    seq_len: int | None = None
    document_mask: bool | None = None
    batch_size: int | None = None
    max_steps: int | None = None
    warmup: int | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    label_smoothing: float | None = None
    epochs: int | None = None
    dpo_beta: float | None = None
    temperature: float | None = None
    lora: bool | None = None  # --lora / --no-lora: techniques.lora.enabled
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_targets: tuple[str, ...] | None = None  # --lora-targets q_proj,v_proj: the placements
    trainable_tokens: tuple[int, ...] | None = None  # LoRA's trainable token ids, made concrete with the tokenizer
    trainable_tokens_why: str = "cli: --trainable-tokens"  # their provenance (the flag or the spec's entries, and why)
    bf16: bool | None = None  # --bf16: hyperparams.dtype bfloat16 (autocast, fp32 master weights)


@dataclass(frozen=True)
class ResolvedSpec:
    """A spec with every value concrete. `provenance` maps each field path (e.g.
    'model.d_model', 'training.optim.lr') to where its value came from: 'spec:/hyperparams/d_model',
    'default', 'derived: mlp_ratio x d_model', 'variant: MoE' or 'cli: --lr'."""

    name: str
    variant: str | None
    model: ModelConfig
    spec: Spec | None  # the validated spec as written (declared numbers, ablation); None when rebuilt from config.json
    training: TrainingConfig | None  # None when rebuilt from an exported config.json
    provenance: dict[str, str] = field(default_factory=dict)
    warnings: tuple[Problem, ...] = ()


def flat_values(config: object) -> dict[str, object]:
    """Every value of a (nested) config dataclass under a dotted key (`n_layers`, `moe.top_k`),
    JSON-typed: what two configs are compared by (a resumed run, weights loaded into a build)."""
    def plain(value: object) -> object:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        return {k: plain(v) for k, v in value.items()} if isinstance(value, dict) else value

    tree = json.loads(json.dumps(plain(config), sort_keys=True, default=str))
    flat: dict[str, object] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = value

    walk("", tree)
    return flat


def value_changes(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """`key: old -> new` for every value that differs between two `flat_values` (added and removed keys too)."""
    absent = "(absent)"
    return [f"{key}: {json.dumps(before.get(key, absent))} -> {json.dumps(after.get(key, absent))}"
            for key in sorted(set(before) | set(after)) if before.get(key, absent) != after.get(key, absent)]


COMPUTE_ONLY = ("dtype", "attention_backend")  # how a model computes, not what its weights mean


def weight_values(model: ModelConfig) -> dict[str, object]:
    """`flat_values` of a model without the compute-only settings: what trained weights must agree on."""
    return {key: value for key, value in flat_values(model).items() if key not in COMPUTE_ONLY}
