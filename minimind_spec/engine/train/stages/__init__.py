"""The stage registry, engine half: each stage kind's factory.

The front-end half (`minimind_spec.stages`) says what the plan needs to know of a kind; here a
kind maps to the factory that builds its `StageParts` (data, pure objective, watches) from
`StageInputs`. A new stage kind is one entry there and one factory here; the loop does not change.
"""

from __future__ import annotations

from ....stages import StageKind
from .base import (ObjectiveOutput, StageData, StageFactory, StageInputs, StageParts, StoppingWatch, Watch,
                   held_out_split)
from .distillation import distillation_stage
from .grpo import grpo_stage
from .language_model import language_model_stage
from .preference import preference_stage

FACTORIES: dict[StageKind, StageFactory] = {
    StageKind.PRETRAIN: language_model_stage,
    StageKind.SFT: language_model_stage,
    StageKind.DISTILL: distillation_stage,
    StageKind.DPO: preference_stage,
    StageKind.GRPO: grpo_stage,
}


def build_stage(inputs: StageInputs) -> StageParts:
    """The complete parts of the stage `inputs.plan` describes."""
    return FACTORIES[inputs.plan.kind](inputs)


__all__ = ["FACTORIES", "ObjectiveOutput", "StageData", "StageFactory", "StageInputs", "StageParts", "StoppingWatch", "Watch",
           "build_stage", "held_out_split"]
