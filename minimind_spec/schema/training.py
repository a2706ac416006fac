"""Spec sections that describe training: regularization, optim and the techniques.

LoRA is part of the module graph (its adapters are modules of the compiled model) and the
distillation settings are resolved (teacher spec, reasoning-token masking); the cross-field
rules check every section. The remaining techniques are validated and shown by `explain`.

Every training stage's section (`techniques.pretrain`, `.sft`, `.distill`, `.dpo`, `.grpo`) may also
set that stage's own schedule and batch (`StageFields`: lr, warmup, batch_size, ...), which
override the global `optim` / `regularization` / `hyperparams.seq_len` for that stage only.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import Field, model_validator

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
    trainable_tokens: list[NonNegativeInt | NonEmptyStr] | Literal["auto"] = Field(
        default="auto", description="Tokens whose embedding rows (and an untied head's rows) train beside the adapters, as ids or "
                                    "token strings such as '<think>' (PEFT's trainable_token_indices). 'auto': the tokenizer's "
                                    "special tokens when the model LoRA starts from never trained on conversations (a base only "
                                    "pretrained on text has random rows for them), else none; the plan says which.")
    modules_to_save: list[NonEmptyStr] = Field(
        default=[], description="Whole modules that train fully beside the adapters and are saved with them (PEFT's "
                                "modules_to_save: a module whose name ends with an entry, e.g. 'norm' or 'lm_head').")
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
    rpo_alpha: Annotated[float, Field(ge=0.0)] = Field(
        default=0.0, description="Weight of an NLL term on the chosen response (RPO; trl's loss_type 'sft' beside 'sigmoid'): it "
                                 "holds the chosen likelihood up while the margin grows. 0 disables; 1.0 is the RPO paper's.")
    length_normalized: bool = Field(
        default=False, description="Compare per-token mean log-probs instead of sums (trl's 'sigmoid_norm'): long responses stop "
                                   "dominating the margin. Such rewards are per token, so beta is usually larger. IPO always is.")
    stop_on_collapse: bool = Field(
        default=False, description="End the stage (saving its model) when the DPO watch sees the chosen log-prob fall while the "
                                   "margin grows, or the margin diverge, instead of only warning.")


_RULE_PARAMETERS = {"exact_match": {"pattern"}, "format": {"require_reasoning"}, "length": {"target"}, "repetition": {"n"}}


class GRPOReward(SpecModel):
    """One verifiable reward rule of the GRPO stage (`minimind_spec.rewards` documents each)."""

    name: Literal["exact_match", "format", "length", "repetition"] = Field(
        description="The rule: exact_match (the extracted answer equals the record's answer: 1, else 0), format "
                    "(<think>reasoning</think> then an answer: 1, else 0), length (0 up to `target` tokens, then down to -1), "
                    "repetition (minus the share of repeated word n-grams).")
    weight: float = Field(default=1.0, description="The rule's weight in a completion's reward (the weighted sum of the rules).")
    pattern: NonEmptyStr | None = Field(
        default=None, description="exact_match: regular expression (case-insensitive) whose last match in the answer, its group 1 "
                                  "if it has one, is the answer given. Default 'The answer is:?\\s*(.+)'.")
    require_reasoning: bool | None = Field(default=None, description="format: the <think> block must not be empty (default true).")
    target: PositiveInt | None = Field(default=None, description="length: completion tokens without penalty (default 256).")
    n: PositiveInt | None = Field(default=None, description="repetition: words per n-gram (default 3).")

    @model_validator(mode="after")
    def _parameters_of_the_rule(self) -> "GRPOReward":
        foreign = sorted(key for key in ("pattern", "require_reasoning", "target", "n")
                         if getattr(self, key) is not None and key not in _RULE_PARAMETERS[self.name])
        if foreign:
            raise ValueError(f"{', '.join(foreign)} is not a parameter of the {self.name} rule (it takes: "
                             f"weight, {', '.join(sorted(_RULE_PARAMETERS[self.name]))})")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a regular expression: {exc}") from None
        return self


def _default_rewards() -> list[GRPOReward]:
    return [GRPOReward(name="exact_match", weight=1.0), GRPOReward(name="format", weight=0.5)]


class GRPO(StageFields):
    """Group relative policy optimisation with verifiable rewards. Its batch_size counts prompts: each is
    sampled `num_generations` times; its seq_len bounds prompt + completion (prompts cut from the left)."""

    enabled: bool = Field(default=False, description="Run GRPO on prompts with reference answers.")
    num_generations: Annotated[int, Field(ge=2)] = Field(
        default=8, description="Completions sampled per prompt, one group (trl GRPOConfig default 8; MiniMind's train_grpo.py 6).")
    max_new_tokens: PositiveInt = Field(default=256, description="Most tokens a completion may have (trl's max_completion_length "
                                                                 "256); prompt + completion fit in the stage's seq_len.")
    temperature: PositiveFloat = Field(default=1.0, description="Sampling temperature (trl's default 1.0; MiniMind samples at 0.8).")
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = Field(default=1.0, description="Nucleus sampling threshold; 1 keeps every token.")
    top_k: NonNegativeInt = Field(default=0, description="Sample among the k likeliest tokens; 0 keeps every token.")
    thinking: bool = Field(default=True, description="The generation prompt opens a <think> block (the chat template's "
                                                     "open_thinking), so every completion reasons first.")
    beta: Annotated[float, Field(ge=0.0)] = Field(
        default=0.04, description="Weight of the per-token KL to the frozen reference (k3 estimator); trl's GRPO default until "
                                  "v0.19 (0.0 since), MiniMind uses 0.1. 0 drops the reference.")
    loss: Literal["grpo", "cispo"] = Field(
        default="grpo", description="grpo: PPO's clipped ratio x advantage; cispo: MiniMax-M1's clipped, detached importance "
                                    "weight x advantage x log-prob (MiniMind's default).")
    clip_eps: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(default=0.2, description="grpo: the ratio is clipped to [1 - eps, 1 + eps].")
    cispo_max_weight: Annotated[float, Field(gt=1.0)] = Field(
        default=5.0, description="cispo: the importance weight is capped at this (MiniMind's --epsilon_high 5.0).")
    std_eps: PositiveFloat = Field(default=1e-4, description="Added to a group's reward std before dividing (MiniMind's 1e-4).")
    rewards: list[GRPOReward] = Field(
        default_factory=_default_rewards, min_length=1,
        description="The reward rules, each {name, weight, its parameters}; default exact_match 1.0 + format 0.5.")

    @model_validator(mode="after")
    def _each_rule_once(self) -> "GRPO":
        names = [rule.name for rule in self.rewards]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"rewards lists {', '.join(repeated)} more than once (each rule once, with its weight)")
        return self


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
    enabled: bool = Field(default=False, description="QLoRA: store the frozen base in 4 bits while LoRA adapters train (needs "
                                                     "techniques.lora). Implemented: scheme nf4, where [\"base\"].")
    scheme: Literal["", "int8", "int4", "nf4", "fp8"] = Field(
        default="", description="Quantisation scheme; required when enabled. Only nf4 (NormalFloat4, blocks of 64, double-quantised "
                                "scales, as in QLoRA) is implemented; the others are refused.")
    where: list[NonEmptyStr] = Field(
        default=[], description="What is quantised: 'base', the frozen decoder projections (q/k/v/o/gate/up/down, experts "
                                "included); embeddings, norms and the head stay at full precision.")


class Techniques(SpecModel):
    pretrain: Pretrain = Field(default_factory=Pretrain, description="Pretraining: its own schedule and batch, document masking.")
    lora: LoRA = Field(default_factory=LoRA, description="Low-rank adapters.")
    sft: SFT = Field(default_factory=SFT, description="Supervised fine-tuning.")
    dpo: DPO = Field(default_factory=DPO, description="Direct preference optimisation.")
    grpo: GRPO = Field(default_factory=GRPO, description="Group relative policy optimisation with verifiable rewards.")
    distill: Distill = Field(default_factory=Distill, description="Knowledge distillation.")
    adapters: Adapters = Field(default_factory=Adapters, description="Bottleneck adapters.")
    quant: Quant = Field(default_factory=Quant, description="Quantisation.")
