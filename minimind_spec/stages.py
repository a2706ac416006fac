"""The stage registry, front-end half: one definition per kind of training stage.

A training run is an ordered list of stages (pretraining, then the post-training stages). Each
kind is defined once, here, torch-free: the records it reads and the flag that names its data,
how its samples become rows, what its loss is normalised by, whether it trains only the LoRA
adapters when the spec enables LoRA, the frozen model it needs, the objective it optimises
(built from the resolved training config), and its recipe defaults: the values a stage takes
where the spec is silent, each with the anchor it comes from. `resolve` reads the recipes,
`plan.build_plan` everything else, and the CLI, `model_files` and the ablation study read the
order and the flags from here.

The engine's half (`engine/train/stages/`) maps each kind to a factory that returns the stage's
data, its pure objective and its watches. A new stage kind is one entry here and one factory
there; the loop and the CLI do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from .config import TrainingConfig
from .objectives import CausalLMObjective, DistillObjective, GRPOObjective, ObjectiveSettings, PreferenceObjective

RecordKind = Literal["pretrain", "conversation", "preference", "prompt"]


class StageKind(StrEnum):
    PRETRAIN = "pretrain"
    SFT = "sft"
    DISTILL = "distill"
    DPO = "dpo"
    GRPO = "grpo"


class RowLayout(StrEnum):
    """How a stage's samples become the rows of a batch."""

    STREAM = "stream"  # consecutive slices of the token stream (documents end to end)
    PACKED = "packed"  # whole samples packed into rows, each attending to itself only
    PAIRS = "pairs"  # chosen and rejected sequences, padded to the batch's longest
    GROUPS = "groups"  # a prompt sampled num_generations times: prompts left-padded, completions right-padded


class FrozenModel(StrEnum):
    NONE = "none"
    REFERENCE = "reference"  # the stage's input model, frozen (DPO, GRPO)
    TEACHER = "teacher"  # another trained model (distillation)


@dataclass(frozen=True)
class RecipeValue:
    value: float
    anchor: str  # where the value comes from, shown as its provenance: "recipe: dpo lr (trl DPOConfig default)"


@dataclass(frozen=True)
class Recipe:
    """A stage's defaults where the spec is silent (neither `techniques.<stage>` nor the global section sets
    the value); a field left None falls back to the global section's default."""

    lr: RecipeValue | None = None
    lora_lr: RecipeValue | None = None  # the lr when the stage trains LoRA adapters only
    batch_size: RecipeValue | None = None
    warmup: RecipeValue | None = None
    grad_clip: RecipeValue | None = None
    lr_ceiling: RecipeValue | None = None  # an lr above this that the stage did not set itself gets a warning

    def value(self, name: str, lora: bool) -> RecipeValue | None:
        if name == "lr" and lora and self.lora_lr is not None:
            return self.lora_lr
        return getattr(self, name, None)


@dataclass(frozen=True)
class StageDefinition:
    kind: StageKind
    summary: str  # one line: what the stage does
    records: RecordKind  # the JSONL record kind its data holds
    data_format: str
    rows: RowLayout
    count_unit: str  # what the loss sum of a step is divided by
    adapter_mode: bool  # under LoRA it trains only the adapters (the post-training stages)
    frozen: FrozenModel
    objective: Callable[[TrainingConfig], ObjectiveSettings]
    evaluation: str
    switch: str | None  # the techniques section whose `enabled` puts the stage in a plan; None: pretraining
    recipe: Recipe = field(default_factory=Recipe)
    samples: bool = False  # its sequences are sampled from the policy while it trains (GRPO): none can be precomputed

    @property
    def data_flag(self) -> str:
        return f"--{self.kind}-data"


def _causal_lm(labels: Literal["every token", "assistant spans"]) -> Callable[[TrainingConfig], ObjectiveSettings]:
    def objective(training: TrainingConfig) -> ObjectiveSettings:
        return CausalLMObjective(labels, training.optim.label_smoothing)
    return objective


def _distill(training: TrainingConfig) -> ObjectiveSettings:
    distill = training.distill
    return DistillObjective(distill.kind, distill.alpha, distill.temperature, distill.loss,
                            distill.reasoning_token_weight if distill.reasoning_token_masking else None)


def _preference(training: TrainingConfig) -> ObjectiveSettings:
    dpo = training.dpo
    return PreferenceObjective(dpo.beta, dpo.loss, dpo.rpo_alpha, dpo.length_normalized, dpo.stop_on_collapse)


def _grpo(training: TrainingConfig) -> ObjectiveSettings:
    grpo = training.grpo
    return GRPOObjective(grpo.num_generations, grpo.max_new_tokens, grpo.temperature, grpo.top_p, grpo.top_k, grpo.thinking,
                         grpo.beta, grpo.loss, grpo.clip_eps, grpo.cispo_max_weight, grpo.std_eps, grpo.rewards)


CONVERSATIONS = 'JSONL {"conversations": [{"role", "content", "reasoning_content"?}]} (ChatML)'
PROMPTS = 'JSONL {"conversations": [{"role": "user", "content": ...}], "answer": ...} (the prompt ends with a user turn)'
LORA_RECIPE = RecipeValue(1e-4, "the card's LoRA recipe, train_lora --lr 1e-4")

STAGES: tuple[StageDefinition, ...] = (
    StageDefinition(
        StageKind.PRETRAIN, "next-token prediction on plain text", "pretrain", 'JSONL {"text": ...}', RowLayout.STREAM,
        "labelled tokens", False, FrozenModel.NONE, _causal_lm("every token"), "held-out perplexity", None,
        Recipe(lr=RecipeValue(5e-4, "MiniMind train_pretrain.py"))),
    StageDefinition(
        StageKind.SFT, "supervised fine-tuning on conversations", "conversation", CONVERSATIONS, RowLayout.PACKED,
        "labelled tokens", True, FrozenModel.NONE, _causal_lm("assistant spans"),
        "held-out perplexity (card recipe: eval perplexity)", "sft",
        Recipe(lr=RecipeValue(1e-5, "MiniMind train_full_sft.py"), lora_lr=LORA_RECIPE,
               batch_size=RecipeValue(8, "the card's SFT recipe"), warmup=RecipeValue(100, "the card's SFT recipe"))),
    StageDefinition(
        StageKind.DISTILL, "logit distillation from a trained teacher", "conversation",
        'JSONL {"conversations": [...]} (ChatML; <think> spans weighted)', RowLayout.PACKED, "weighted labelled tokens",
        True, FrozenModel.TEACHER, _distill, "held-out perplexity and teacher KL", "distill",
        Recipe(lr=RecipeValue(5e-6, "MiniMind train_distillation.py"), lora_lr=LORA_RECIPE)),
    StageDefinition(
        StageKind.DPO, "direct preference optimisation on chosen/rejected pairs", "preference",
        'JSONL {"chosen": ..., "rejected": ...} (strings or conversations)', RowLayout.PAIRS, "pairs", True,
        FrozenModel.REFERENCE, _preference, "reward margin and accuracy on held-out pairs", "dpo",
        Recipe(lr=RecipeValue(1e-6, "trl DPOConfig default; MiniMind uses 4e-8"),
               lora_lr=RecipeValue(5e-6, "DPO with LoRA adapters"), grad_clip=RecipeValue(1.0, "the card's DPO recipe"),
               lr_ceiling=RecipeValue(1e-5, "DPO rates beyond it collapse the likelihoods of chosen and rejected alike"))),
    StageDefinition(
        StageKind.GRPO, "group relative policy optimisation with verifiable rewards (sampled completions)", "prompt",
        PROMPTS, RowLayout.GROUPS, "completion tokens", True, FrozenModel.REFERENCE, _grpo,
        "mean reward of greedy completions of held-out prompts", "grpo",
        Recipe(lr=RecipeValue(1e-6, "trl GRPOConfig default; MiniMind train_grpo.py uses 3e-7"),
               lora_lr=RecipeValue(5e-6, "GRPO with LoRA adapters, as Unsloth's GRPO recipes"),
               grad_clip=RecipeValue(1.0, "MiniMind train_grpo.py and trl's max_grad_norm")), samples=True),
)

STAGE_ORDER: tuple[StageKind, ...] = tuple(definition.kind for definition in STAGES)
_BY_KIND = {definition.kind: definition for definition in STAGES}


def stage(kind: StageKind | str) -> StageDefinition:
    """The definition of a stage kind (a StageKind or its name)."""
    return _BY_KIND[StageKind(kind)]
