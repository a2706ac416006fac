"""Spec sections that describe training: regularization, optim and the techniques.

LoRA is part of the module graph (its adapters are modules of the compiled model) and the
distillation settings are resolved (teacher spec, reasoning-token masking); the cross-field
rules check every section. The remaining techniques are validated and shown by `explain`.

Every training stage's section (`techniques.pretrain`, `.sft`, `.distill`, `.dpo`) may also
set that stage's own schedule and batch (`StageFields`: lr, warmup, batch_size, ...), which
override the global `optim` / `regularization` / `hyperparams.seq_len` for that stage only.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field

from .base import NonEmptyStr, NonNegativeInt, PositiveFloat, PositiveInt, Probability, SpecModel

ProjectionName = Literal["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROJECTIONS: tuple[str, ...] = get_args(ProjectionName)


class Regularization(SpecModel):
    weight_decay: Annotated[float, Field(ge=0.0)] = Field(default=0.0, description="AdamW decoupled weight decay.")
    grad_clip: PositiveFloat | None = Field(default=1.0, description="Clip the global gradient norm to this value; null disables.")
    label_smoothing: Probability = Field(default=0.0, description="Label smoothing of the cross-entropy loss.")


class Optim(SpecModel):
    optimizer: Literal["AdamW", "Adam", "SGD"] = Field(default="AdamW", description="Optimizer.")
    betas: tuple[Probability, Probability] = Field(default=(0.9, 0.95), description="Adam betas (beta1, beta2).")
    lr: PositiveFloat = Field(default=1e-4, description="Peak learning rate.")
    warmup: NonNegativeInt = Field(default=0, description="Linear warmup steps; must be shorter than max_steps when that is set.")
    scheduler: Literal["cosine", "linear", "constant"] = Field(default="cosine", description="Decay after warmup.")
    min_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.1, description="Where the cosine or linear decay ends, as a share of the peak lr (0.1: ten percent).")
    max_steps: PositiveInt | None = Field(default=None, description="Length of a run in optimizer steps; null lets epochs decide.")
    batch_size: PositiveInt = Field(default=8, description="Sequences per optimizer step (the card's recipes use 8).")


class StageFields(SpecModel):
    """One stage's own schedule and batch; each unset field falls back to the global section, then to
    the stage's documented recipe default (see `minimind_spec.stages`)."""

    lr: PositiveFloat | None = Field(default=None, description="Peak learning rate of this stage (overrides optim.lr).")
    min_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        default=None, description="Where this stage's decay ends, as a share of its peak lr (overrides optim.min_lr_ratio).")
    warmup: NonNegativeInt | None = Field(default=None, description="Linear warmup steps of this stage (overrides optim.warmup).")
    batch_size: PositiveInt | None = Field(default=None, description="Sequences (DPO: pairs) per optimizer step of this stage "
                                                                     "(overrides optim.batch_size).")
    micro_batch: PositiveInt | None = Field(default=None, description="Sequences per forward pass; the rest of the batch is "
                                                                      "gradient accumulation (a memory knob: the result does not change).")
    epochs: PositiveInt | None = Field(default=None, description="Passes over this stage's data when max_steps is not set.")
    max_steps: PositiveInt | None = Field(default=None, description="Optimizer steps of this stage (overrides optim.max_steps).")
    seq_len: Annotated[int, Field(gt=0, le=1_048_576)] | None = Field(
        default=None, description="Row length in tokens of this stage (overrides hyperparams.seq_len; at most the model's positions).")
    weight_decay: Annotated[float, Field(ge=0.0)] | None = Field(
        default=None, description="AdamW weight decay of this stage (overrides regularization.weight_decay).")
    grad_clip: PositiveFloat | None = Field(default=None, description="Gradient-norm clip of this stage (overrides "
                                                                      "regularization.grad_clip).")


class Pretrain(StageFields):
    doc_mask: bool = Field(default=False, description="Isolate the documents of a pretraining row (each attends to itself only, "
                                                      "positions from 0, as Llama 3 does); off: attention runs across documents, "
                                                      "as nanoGPT and MiniMind pretrain.")


class LoRA(SpecModel):
    enabled: bool = Field(default=False, description="Attach LoRA adapters and train only them.")
    placements: list[NonEmptyStr] = Field(
        default=[], description="Projections that get an adapter: any of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj."
    )
    rank: PositiveInt = Field(default=8, description="Adapter rank r.")
    alpha: PositiveFloat = Field(default=16.0, description="Adapter scale numerator: the update is (alpha / rank) * B A x.")
    dropout: Probability = Field(default=0.0, description="Dropout on the adapter input.")
    trainable_params: NonNegativeInt | None = Field(default=None, description="Declared adapter parameter count. Checked, never trusted.")
    percentage: Annotated[float, Field(ge=0.0, le=100.0)] | None = Field(
        default=None, description="Declared trainable share in percent of all parameters. Checked, never trusted."
    )


class SFT(StageFields):
    enabled: bool = Field(default=False, description="Run supervised fine-tuning.")
    datasets: list[NonEmptyStr] = Field(default=[], description="Dataset names; at least one when enabled.")
    loss: Literal["cross_entropy"] = Field(default="cross_entropy", description="SFT objective.")
    epochs: PositiveInt = Field(default=1, description="Passes over the data (distillation's too, unless it sets its own).")


class DPO(StageFields):
    enabled: bool = Field(default=False, description="Run direct preference optimisation.")
    beta: PositiveFloat = Field(default=0.1, description="DPO temperature beta.")
    reference_model: NonEmptyStr = Field(default="base_model", description="Frozen reference policy; 'base_model' is the model before DPO.")
    pair_source: NonEmptyStr = Field(default="preference_pairs", description="Dataset of chosen/rejected pairs.")
    loss: Literal["sigmoid", "hinge", "ipo"] = Field(default="sigmoid", description="DPO loss variant.")


class Distill(StageFields):
    enabled: bool = Field(default=False, description="Distil from a teacher model.")
    type: Literal["logit", "hidden"] = Field(default="logit", description="Match output logits or hidden states.")
    teacher: NonEmptyStr = Field(default="larger_model", description="Teacher name; resolved to `<name>.json` beside the spec unless teacher_spec is set.")
    teacher_spec: NonEmptyStr | None = Field(default=None, description="Path of the teacher's spec, relative to this spec's file.")
    loss: Literal["KL", "reverse_KL", "MSE"] = Field(default="KL", description="Distillation loss.")
    temperature: PositiveFloat = Field(default=1.0, description="Softmax temperature of teacher and student logits.")
    layers: list[NonNegativeInt] = Field(default=[], description="Student layers whose hidden states are matched (type 'hidden').")
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = Field(default=0.5, description="Weight of the hard-label cross-entropy; the teacher term weighs 1 - alpha.")
    reasoning_token_masking: bool | None = Field(
        default=None, description="Weight reasoning-span tokens separately. Default: on when tricks lists 'reasoning-token-masking'."
    )
    reasoning_token_weight: Annotated[float, Field(ge=0.0)] = Field(default=0.5, description="Loss weight of reasoning tokens when masking is on (card section D: 0.5).")


class Adapters(SpecModel):
    enabled: bool = Field(default=False, description="Bottleneck adapters (not compiled yet; must stay disabled).")
    bottleneck: NonNegativeInt = Field(default=0, description="Adapter bottleneck width.")
    placements: list[NonEmptyStr] = Field(default=[], description="Where adapters go.")


class Quant(SpecModel):
    enabled: bool = Field(default=False, description="Quantise weights (planning only).")
    scheme: Literal["", "int8", "int4", "nf4", "fp8"] = Field(default="", description="Quantisation scheme; required when enabled.")
    where: list[NonEmptyStr] = Field(default=[], description="Which projections to quantise.")


class Techniques(SpecModel):
    pretrain: Pretrain = Field(default_factory=Pretrain, description="Pretraining: its own schedule and batch, document masking.")
    lora: LoRA = Field(default_factory=LoRA, description="Low-rank adapters.")
    sft: SFT = Field(default_factory=SFT, description="Supervised fine-tuning.")
    dpo: DPO = Field(default_factory=DPO, description="Direct preference optimisation.")
    distill: Distill = Field(default_factory=Distill, description="Knowledge distillation.")
    adapters: Adapters = Field(default_factory=Adapters, description="Bottleneck adapters.")
    quant: Quant = Field(default_factory=Quant, description="Quantisation.")
