"""The training plan's types: what `build_plan` decides and the engine executes.

A `TrainingPlan` is the ordered `StagePlan`s of a run. A `StagePlan` carries, typed, every
decision the engine acts on (precision, the DPO reference's form, the objective's settings,
what trains, the optimizer, the schedule, the batch split, the row layout), each setting's
provenance, the warnings a user should read before training, and the estimates. The engine
never re-derives any of these from the resolved spec; `decisions()` is what a resumed stage
must agree on and what a test compares with what the engine did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from ..objectives import ObjectiveSettings
from ..stages import RowLayout, StageKind


class Precision(StrEnum):
    """How a stage computes; master weights and optimizer state are fp32 in every mode."""

    FP32 = "fp32"
    BF16 = "bf16 autocast"
    FP16 = "fp16 autocast with a GradScaler"


class ReferenceMode(StrEnum):
    """The form of the DPO reference (the stage's input model, frozen)."""

    COPY = "copy"  # a frozen copy of the input model
    ADAPTERS_OFF = "adapters off"  # the policy itself with its untrained (B = 0) LoRA adapters disabled
    PRECOMPUTED = "precomputed"  # every pair's reference log-probs, computed once before training


DeviceKind = Literal["auto", "cpu", "cuda", "mps"]


@dataclass(frozen=True)
class DeviceFacts:
    """The device a run trains on, as far as it is known when planning (torch is not loaded by `--plan`)."""

    kind: DeviceKind = "auto"
    name: str = ""
    bf16: bool | None = None  # bf16 arithmetic supported (None: not known yet)

    @classmethod
    def named(cls, device: str) -> "DeviceFacts":
        """What is known of `--device NAME` without asking the device (no torch): its kind."""
        kinds: dict[str, DeviceKind] = {"cpu": "cpu", "cuda": "cuda", "mps": "mps"}
        return cls(kinds.get(device.split(":")[0], "auto"))


@dataclass(frozen=True)
class PlanInputs:
    """What the command line says beyond the spec: data files, checkpoints, processes, device."""

    data: Mapping[StageKind, Path] = field(default_factory=dict)
    init: Path | None = None  # a trained checkpoint: the base model exists, pretraining is skipped
    teacher: Path | None = None  # the distillation teacher's trained model
    stages: tuple[StageKind, ...] | None = None  # only these stages (--stage)
    tokens_per_s: float | None = None  # throughput for the wall-time estimate
    tokenizer_vocab: int | None = None  # size of the tokenizer the run will use (--tokenizer), checked against the spec
    processes: int = 1  # data-parallel processes (torchrun); each trains batch / processes rows per step
    fsdp: bool = False  # weights, gradients and optimizer state sharded over the processes (FSDP2)
    precompute_ref: bool = False  # DPO: the reference's log-probs computed once, no reference in memory
    pack: bool = True  # fine-tuning samples packed into rows (False: one padded sample per row)
    device: DeviceFacts = DeviceFacts()


@dataclass(frozen=True)
class BaseQuant:
    """QLoRA in a stage: the frozen base's decoder projections held in NF4 (`techniques.quant`)."""

    scheme: str  # "nf4"
    matrices: int  # projection weights quantised (q/k/v/o/gate/up/down of every layer, experts included)
    params: int  # their weights
    bytes: int  # what they are stored in: 4-bit codes, 8-bit block scales, fp32 group factors

    @property
    def fp32_bytes(self) -> int:
        return 4 * self.params

    @property
    def ratio(self) -> float:
        return self.bytes / self.fp32_bytes if self.params else 0.0


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of one process. With FSDP the weights, gradients and optimizer state are 1/shards
    of the model's (one layer's full weights, gathered in turn, are not counted)."""

    weights: int  # fp32; under QLoRA the base's projections at their NF4 bytes
    gradients: int
    optimizer: int
    activations: int
    frozen_models: int  # reference copy or teacher
    shards: int = 1

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.frozen_models


@dataclass(frozen=True)
class StagePlan:
    kind: StageKind
    # data
    data: Path | None
    data_format: str
    rows: RowLayout
    pack: bool  # packed rows (each sample isolated); False: one padded sample per row
    document_mask: bool  # stream rows isolate their documents
    # model
    init_from: str  # "random init", "the sft stage's final model", or a checkpoint path
    trainable_roles: tuple[str, ...]
    trainable_params: int
    total_params: int
    active_params: int  # parameters one token passes through (MoE: its top-k experts)
    declared: tuple[str, ...]  # the spec's declared trainable numbers the stage contradicts (LoRA)
    base_quant: BaseQuant | None  # QLoRA: the frozen base in NF4 while the adapters train; None: full precision
    # objective
    objective: ObjectiveSettings
    count_unit: str  # what the step's loss sum is divided by
    frozen_model: str | None  # the DPO reference or the distillation teacher, described
    reference: ReferenceMode | None
    teacher: Path | None
    evaluation: str
    # optimisation
    optimizer: str
    betas: tuple[float, float]
    weight_decay: float
    decay_params: int
    no_decay_params: int  # trainable norms and embeddings: no weight decay
    lr: float
    scheduler: str
    warmup: int
    min_lr_ratio: float
    grad_clip: float | None
    precision: Precision
    attention: str  # the attention backend the stage's forward runs: flash-attn2, sdpa or eager
    attention_note: str | None  # why it is not the one the spec asks for (None: it is)
    batch_size: int
    micro_batch: int
    grad_accumulation: int
    processes: int  # batch = processes x grad_accumulation x micro_batch
    seq_len: int
    epochs: int
    max_steps: int | None  # None: the epochs over the data decide
    # estimates
    tokens: int | None
    train_flops: int | None
    memory: MemoryEstimate
    wall_seconds: float | None
    tokens_per_s: float | None
    throughput_source: str | None
    # before running
    warnings: tuple[str, ...]
    blocked: str | None  # why the stage cannot run; None when it can
    unblock: str | None  # what fixes it
    provenance: dict[str, str]

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / self.total_params if self.total_params else 0.0

    @property
    def schedule(self) -> str:
        if self.scheduler == "constant":
            return f"linear warmup {self.warmup} steps, then constant"
        return f"linear warmup {self.warmup} steps, then {self.scheduler} to {self.min_lr_ratio:g} x peak"

    def decisions(self) -> dict[str, Any]:
        """What the stage trains with, as JSON values: a resumed stage must agree on these. The batch
        split (micro-batch, accumulation, processes) is left out: it changes memory, not the result."""
        keys = ("kind", "rows", "pack", "document_mask", "trainable_roles", "objective", "reference", "optimizer", "betas",
                "weight_decay", "lr", "scheduler", "warmup", "min_lr_ratio", "grad_clip", "precision", "batch_size",
                "seq_len", "epochs", "max_steps")
        values = asdict(self)
        decided = {key: _json_value(values[key]) for key in keys}
        if self.base_quant is not None:  # only when set: stages recorded before QLoRA existed resume unchanged
            decided["base_quant"] = self.base_quant.scheme
        return decided


def _json_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class TrainingPlan:
    name: str
    variant: str | None
    stages: tuple[StagePlan, ...]
    tokens_per_s: float | None
    device: DeviceFacts = DeviceFacts()
    processes: int = 1
    fsdp: bool = False
    warnings: tuple[str, ...] = ()  # about the whole run (a vocabulary padded beyond the tokenizer, ...)

    def stage(self, kind: StageKind | str) -> StagePlan:
        return next(s for s in self.stages if s.kind == kind)

    def to_json(self) -> dict[str, Any]:
        """The plan as `train --plan --json` prints it (each stage's objective with its description)."""
        out = _json_value(asdict(self))
        for stage, plan in zip(out["stages"], self.stages):
            stage["objective"]["description"] = plan.objective.describe()
            stage["schedule"] = plan.schedule
            stage["memory"]["total"] = plan.memory.total
            stage["trainable_percent"] = round(plan.trainable_percent, 4)
            stage["runnable"] = plan.blocked is None
        return out
