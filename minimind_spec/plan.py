"""The training plan: the spec's `techniques` as ordered stages, each with every setting it will
run with (and where that setting came from) and what it will cost. Front end: no torch, no data
read (data files are only looked at: exists, size), so `train --plan` starts as fast as `validate`.

Stages run pretrain -> sft -> distill -> dpo (a base model must exist before the others;
`--init CKPT` supplies one and skips pretraining). LoRA, when the spec enables it, is the
adapter mode of the post-training stages: they train only the adapters, pretraining trains the
base. Where the spec is silent a stage takes the card's recipe (section D: SFT batch 8,
seq_len 1024, warmup 100, eval perplexity; DPO grad_clip 1.0), recorded as `card recipe: ...`.
A stage that cannot run (no data, no teacher) is listed as blocked, with the flag that unblocks it.

Estimates: tokens = steps x batch x seq_len (packed rows; without max_steps, epochs over the
data file at ~`BYTES_PER_TOKEN` bytes per token); training FLOPs per token = 3 x forward when
the base trains, 2 x forward + the adapters' share when it is frozen (no weight gradients),
plus a forward of the reference or teacher; peak memory = fp32 weights + fp32 gradients and
AdamW moments of the trainable parameters + activations of one micro-batch at the spec's
dtype + frozen reference/teacher weights at the spec's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import networkx as nx

from .config import ResolvedSpec
from .errors import Problem, SpecError
from .graph import BASE_ROLES, Costs, ParamRole, build_graph, graph_costs, params_with_roles
from .graph.costs import DTYPE_BYTES
from .graph.declared import lora_declared_problems

StageKind = Literal["pretrain", "sft", "distill", "dpo"]
STAGE_ORDER: tuple[StageKind, ...] = ("pretrain", "sft", "distill", "dpo")
DATA_FLAGS: dict[StageKind, str] = {"pretrain": "--pretrain-data", "sft": "--sft-data", "distill": "--distill-data",
                                    "dpo": "--dpo-data"}
DATA_FORMATS: dict[StageKind, str] = {
    "pretrain": 'JSONL {"text": ...}',
    "sft": 'JSONL {"conversations": [{"role", "content", "reasoning_content"?}]} (ChatML)',
    "distill": 'JSONL {"conversations": [...]} (ChatML; <think> spans weighted)',
    "dpo": 'JSONL {"chosen": ..., "rejected": ...} (strings or conversations)',
}
NO_DECAY_ROLES = frozenset({ParamRole.NORM, ParamRole.EMBEDDING})
BYTES_PER_TOKEN = 3.5  # rough size of a BPE token in UTF-8 text, for data-file estimates only
OPTIMIZER_STATE_BYTES = {"AdamW": 8, "Adam": 8, "SGD": 4}  # per trainable parameter (moments; SGD momentum)
SFT_RECIPE = {"batch_size": 8, "seq_len": 1024, "warmup": 100}
DPO_RECIPE_GRAD_CLIP = 1.0


@dataclass(frozen=True)
class PlanInputs:
    """What the command line says beyond the spec: data files, checkpoints, throughput."""

    data: Mapping[StageKind, Path] = field(default_factory=dict)
    init: Path | None = None  # a trained checkpoint: the base model exists, pretraining is skipped
    teacher: Path | None = None  # the distillation teacher's checkpoint
    stages: tuple[StageKind, ...] | None = None  # only these stages (--stage)
    micro_batch: int | None = None  # sequences per forward; the rest is gradient accumulation
    tokens_per_s: float | None = None  # throughput for the wall-time estimate
    tokenizer_vocab: int | None = None  # size of the tokenizer the run will use (--tokenizer), checked against the spec
    processes: int = 1  # data-parallel processes (torchrun); each trains batch / processes rows per step
    fsdp: bool = False  # weights, gradients and optimizer state sharded over the processes (FSDP2)


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one process. With FSDP the weights, gradients and optimizer state are 1/shards
    of the model's (one layer's full weights, gathered in turn, are not counted)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    frozen_models: int  # reference or teacher
    shards: int = 1  # processes the weights, gradients and optimizer state are sharded over

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.frozen_models


@dataclass(frozen=True)
class StagePlan:
    kind: StageKind
    objective: str
    data: Path | None
    data_format: str
    init_from: str  # "random init (seed)", "previous stage", or a checkpoint path
    trainable_roles: tuple[str, ...]
    trainable_params: int
    total_params: int
    active_params: int  # parameters one token passes through (MoE: its top-k experts); = total_params when dense
    frozen_model: str | None  # the DPO reference or the distillation teacher
    optimizer: str
    decay_params: int  # trainable parameters with weight decay
    no_decay_params: int  # trainable norms and embeddings: no weight decay
    lr: float
    schedule: str
    warmup: int
    grad_clip: float | None
    label_smoothing: float
    precision: str
    batch_size: int
    micro_batch: int
    grad_accumulation: int
    processes: int  # data-parallel processes; batch = processes x grad_accumulation x micro_batch
    seq_len: int
    epochs: int
    max_steps: int | None
    evaluation: str
    tokens: int | None
    train_flops: int | None
    memory: MemoryEstimate
    wall_seconds: float | None
    tokens_per_s: float | None  # the throughput behind wall_seconds
    throughput_source: str | None  # "cli: --tokens-per-s" or "probe: ..."
    declared: tuple[str, ...]  # the spec's declared trainable numbers that the stage contradicts (LoRA)
    blocked: str | None  # why the stage cannot run; None when it can
    unblock: str | None  # the flag that fixes it
    provenance: dict[str, str]

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0


@dataclass(frozen=True)
class TrainingPlan:
    name: str
    variant: str | None
    stages: tuple[StagePlan, ...]
    tokens_per_s: float | None


def _pick(value: object | None, how: str, provenance: dict[str, str], key: str, fallback: object, fallback_how: str) -> object:
    if value is not None:
        provenance[key] = how
        return value
    provenance[key] = fallback_how
    return fallback


class _StageBuilder:
    def __init__(self, resolved: ResolvedSpec, graph: nx.DiGraph, inputs: PlanInputs) -> None:
        assert resolved.training is not None
        self.resolved = resolved
        self.training = resolved.training
        self.graph = graph
        self.inputs = inputs
        self.has_lora = resolved.model.lora is not None

    def _is_default(self, key: str) -> bool:
        return self.resolved.provenance.get(key, "default") == "default"

    def settings(self, kind: StageKind, provenance: dict[str, str]) -> tuple[int, int, int, float | None]:
        """batch_size, seq_len, warmup, grad_clip of a stage: cli/spec, else the card's recipe, else the default."""
        optim, prov = self.training.optim, self.resolved.provenance
        batch, warmup, clip = optim.batch_size, optim.warmup, optim.grad_clip
        seq_len = self.resolved.model.seq_len
        provenance["batch_size"] = prov["training.optim.batch_size"]
        provenance["warmup"] = prov["training.optim.warmup"]
        provenance["grad_clip"] = prov["training.optim.grad_clip"]
        provenance["seq_len"] = prov["model.seq_len"]
        if kind == "sft":
            if self._is_default("training.optim.batch_size"):
                batch, provenance["batch_size"] = SFT_RECIPE["batch_size"], "card recipe: SFT batch 8"
            if self._is_default("model.seq_len"):
                seq_len, provenance["seq_len"] = SFT_RECIPE["seq_len"], "card recipe: SFT seq_len 1024"
            if self._is_default("training.optim.warmup"):
                warmup, provenance["warmup"] = SFT_RECIPE["warmup"], "card recipe: SFT warmup 100"
        if kind == "dpo" and self._is_default("training.optim.grad_clip"):
            clip, provenance["grad_clip"] = DPO_RECIPE_GRAD_CLIP, "card recipe: DPO grad_clip 1.0"
        return batch, seq_len, warmup, clip

    def objective(self, kind: StageKind) -> tuple[str, str]:
        """(objective, evaluation) of a stage."""
        training = self.training
        if kind == "pretrain":
            return "causal LM: next-token cross-entropy on every token", "held-out perplexity"
        if kind == "sft":
            return ("causal LM on the assistant spans (ChatML), prompts and padding masked",
                    "held-out perplexity (card recipe: eval perplexity)")
        if kind == "distill":
            distill = training.distill
            weight = (f"; reasoning tokens weighted {distill.reasoning_token_weight:g}"
                      if distill.reasoning_token_masking else "; every token weighted 1")
            return (f"{distill.alpha:g} x CE(labels) + {1 - distill.alpha:g} x T^2 x {distill.loss}(teacher_T || student_T), "
                    f"T = {distill.temperature:g}, {distill.kind} distillation{weight}", "held-out perplexity and teacher KL")
        dpo = training.dpo
        return (f"DPO ({dpo.loss}), beta {dpo.beta:g}, log-probs of the response tokens only",
                "reward margin and accuracy on held-out pairs")

    def frozen_model(self, kind: StageKind) -> tuple[str | None, int, str | None, str | None]:
        """(description, frozen parameters held in memory, blocked reason, unblock flag)."""
        if kind == "dpo":
            if self.has_lora:
                return "reference: the stage's input model with the adapters disabled (no second copy)", 0, None, None
            return "reference: a frozen copy of the stage's input model", params_with_roles(self.graph, BASE_ROLES), None, None
        if kind == "distill":
            distill = self.training.distill
            teacher_params = 0
            if distill.teacher_spec is not None:
                from .loader import load_spec
                from .resolve import resolve

                teacher = resolve(load_spec(distill.teacher_spec))
                teacher_params = params_with_roles(build_graph(teacher), BASE_ROLES)
            description = f"teacher {distill.teacher!r}" + (f" ({teacher_params:,} parameters)" if teacher_params else "")
            if distill.teacher_spec is None:
                return description, 0, f"no spec found for teacher {distill.teacher!r}", "techniques.distill.teacher_spec"
            if self.inputs.teacher is None:
                return description, teacher_params, "no teacher checkpoint", "--teacher RUN_DIR"
            return description, teacher_params, None, None
        return None, 0, None, None

    def stage(self, kind: StageKind, first: bool, costs_by_roles: dict[frozenset[ParamRole], Costs],
              upstream_blocked: str | None) -> StagePlan:
        resolved, training, inputs = self.resolved, self.training, self.inputs
        optim = training.optim
        provenance: dict[str, str] = {}
        roles = frozenset({ParamRole.LORA}) if self.has_lora and kind != "pretrain" else BASE_ROLES
        provenance["trainable_roles"] = (f"{resolved.provenance.get('model.lora.enabled', 'spec')} (adapter mode of post-training)"
                                         if roles == {ParamRole.LORA} else "default (the whole base model)")
        costs = costs_by_roles.setdefault(roles, graph_costs(self.graph, resolved.model, roles))
        batch, seq_len, warmup, grad_clip = self.settings(kind, provenance)
        micro = int(_pick(inputs.micro_batch, "cli: --micro-batch", provenance, "micro_batch", batch, "default (= batch_size)"))  # type: ignore[arg-type]
        if batch % inputs.processes:
            raise SpecError(Problem("", f"the batch size {batch} does not divide over {inputs.processes} processes",
                                    "--batch-size N with N a multiple of the process count"))
        per_process = batch // inputs.processes  # each process trains its block of every step's rows
        micro = min(micro, per_process)
        if per_process % micro:
            raise SpecError(Problem("", f"--micro-batch {micro} does not divide the {per_process} rows each process trains per step",
                                    "pick a divisor, e.g. " + ", ".join(str(d) for d in range(1, per_process + 1)
                                                                        if per_process % d == 0)))
        epochs = training.sft.epochs if kind in ("sft", "distill") else 1
        provenance["epochs"] = resolved.provenance["training.sft.epochs"] if kind in ("sft", "distill") else "default"
        objective, evaluation = self.objective(kind)
        data = inputs.data.get(kind)
        blocked = unblock = None
        if data is None:
            blocked, unblock = "no data", f"{DATA_FLAGS[kind]} FILE"
        elif not data.is_file():
            blocked, unblock = f"data file {data} not found", f"{DATA_FLAGS[kind]} FILE"
        frozen, frozen_params, frozen_blocked, frozen_unblock = self.frozen_model(kind)
        if blocked is None and frozen_blocked is not None:
            blocked, unblock = frozen_blocked, frozen_unblock
        if blocked is None and upstream_blocked is not None:
            blocked, unblock = f"its input model comes from the blocked stage {upstream_blocked!r}", f"--init CKPT, or unblock {upstream_blocked!r}"

        tokens_per_step = batch * seq_len
        steps = optim.max_steps
        if steps is None and data is not None and data.is_file():
            steps = max(1, math.ceil(epochs * data.stat().st_size / BYTES_PER_TOKEN / tokens_per_step))
        tokens = steps * tokens_per_step if steps is not None else None
        base_trains = bool(roles & BASE_ROLES)
        forward = costs.flops_per_token
        per_token = 3 * forward if base_trains else 2 * forward + 2 * sum(
            op.flops for op in _lora_ops(self.graph))  # the adapters' weight gradients
        if kind == "dpo" and frozen_params:
            per_token += forward  # the reference forward
        if kind == "distill" and frozen_params:
            per_token += 2 * frozen_params  # the teacher forward, ~2 FLOPs per parameter per token
        bytes_per = DTYPE_BYTES[resolved.model.dtype]
        shards = inputs.processes if inputs.fsdp else 1
        memory = MemoryEstimate(
            weights=4 * costs.total_params // shards,
            gradients=4 * costs.trainable_params // shards,
            optimizer=OPTIMIZER_STATE_BYTES[optim.optimizer] * costs.trainable_params // shards,
            activations=costs.activation_bytes * micro * seq_len // max(1, resolved.model.seq_len)
            * (2 if kind == "dpo" else 1),  # DPO runs chosen and rejected
            frozen_models=frozen_params * bytes_per,
            shards=shards,
        )
        no_decay = params_with_roles(self.graph, roles & NO_DECAY_ROLES)
        schedule = (f"linear warmup {warmup} steps, then {optim.scheduler} to {optim.min_lr_ratio:g} x peak"
                    if optim.scheduler != "constant" else f"linear warmup {warmup} steps, then constant")
        precision = ("bf16 autocast, fp32 master weights" if resolved.model.dtype == "bfloat16"
                     else "fp16 autocast with loss scaling, fp32 master weights" if resolved.model.dtype == "float16" else "fp32")
        init_from = str(inputs.init) if first and inputs.init is not None else ("random init" if first else "previous stage")
        return StagePlan(
            kind=kind, objective=objective, data=data, data_format=DATA_FORMATS[kind], init_from=init_from,
            trainable_roles=tuple(sorted(str(r) for r in roles if params_with_roles(self.graph, {r}))),
            trainable_params=costs.trainable_params,
            total_params=costs.total_params, active_params=costs.active_params_per_token, frozen_model=frozen,
            optimizer=f"{optim.optimizer}(betas={optim.betas[0]:g}/{optim.betas[1]:g}, weight_decay {optim.weight_decay:g})",
            decay_params=costs.trainable_params - no_decay, no_decay_params=no_decay,
            lr=optim.lr, schedule=schedule, warmup=warmup, grad_clip=grad_clip, label_smoothing=optim.label_smoothing,
            precision=precision, batch_size=batch, micro_batch=micro, grad_accumulation=batch // inputs.processes // micro,
            processes=inputs.processes, seq_len=seq_len,
            epochs=epochs, max_steps=optim.max_steps, evaluation=evaluation, tokens=tokens,
            train_flops=tokens * per_token if tokens is not None else None, memory=memory,
            wall_seconds=tokens / inputs.tokens_per_s if tokens is not None and inputs.tokens_per_s else None,
            tokens_per_s=inputs.tokens_per_s, throughput_source="cli: --tokens-per-s" if inputs.tokens_per_s else None,
            declared=tuple(f"{p.path}: {p.message}" for p in lora_declared_problems(resolved, costs.trainable_params,
                                                                                     costs.total_params))
            if roles == {ParamRole.LORA} else (),
            blocked=blocked, unblock=unblock,
            provenance={"lr": resolved.provenance["training.optim.lr"], **provenance},
        )


def _lora_ops(graph: nx.DiGraph) -> list:
    from .graph import nodes

    return [op for op in nodes(graph) if op.role == ParamRole.LORA]


def enabled_stages(resolved: ResolvedSpec, inputs: PlanInputs) -> tuple[StageKind, ...]:
    """The stages the spec asks for, in order: pretrain unless --init gives a base model."""
    assert resolved.training is not None
    training = resolved.training
    wanted = {"pretrain": inputs.init is None, "sft": training.sft.enabled, "distill": training.distill.enabled,
              "dpo": training.dpo.enabled}
    stages = tuple(kind for kind in STAGE_ORDER if wanted[kind])
    if inputs.stages is not None:
        stages = tuple(kind for kind in STAGE_ORDER if kind in inputs.stages)
    return stages


def build_plan(resolved: ResolvedSpec, inputs: PlanInputs | None = None) -> TrainingPlan:
    """The ordered stages of training `resolved`, with settings, provenance and estimates."""
    if resolved.training is None:
        raise SpecError(Problem("", "this model was rebuilt from an exported config.json; it has no training section",
                                "plan from the spec file"))
    inputs = inputs or PlanInputs()
    if inputs.tokenizer_vocab is not None and inputs.tokenizer_vocab != resolved.model.vocab_size:
        raise SpecError(Problem("/hyperparams/vocab", f"the spec's vocab is {resolved.model.vocab_size:,} but the tokenizer has "
                                                      f"{inputs.tokenizer_vocab:,} ids",
                                "set hyperparams.vocab to the tokenizer's size, or train a tokenizer with --vocab-size "
                                f"{resolved.model.vocab_size}"))
    graph = build_graph(resolved)
    builder = _StageBuilder(resolved, graph, inputs)
    costs: dict[frozenset[ParamRole], Costs] = {}
    stages = enabled_stages(resolved, inputs)
    plans: list[StagePlan] = []
    for i, kind in enumerate(stages):
        upstream = next((p.kind for p in plans if p.blocked is not None), None)
        plans.append(builder.stage(kind, i == 0, costs, upstream))
    return TrainingPlan(resolved.name, resolved.variant, tuple(plans), inputs.tokens_per_s)


def with_throughput(plan: TrainingPlan, rates: Mapping[StageKind, float], source: str) -> TrainingPlan:
    """`plan` with the measured tokens/s of some stages (a probe) and their wall-time estimates."""
    stages = tuple(
        replace(stage, tokens_per_s=rates[stage.kind], throughput_source=source,
                wall_seconds=stage.tokens / rates[stage.kind] if stage.tokens is not None and rates[stage.kind] > 0 else None)
        if stage.kind in rates else stage
        for stage in plan.stages)
    return replace(plan, stages=stages)
