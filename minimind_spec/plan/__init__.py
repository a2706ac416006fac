"""The training plan: the spec's `techniques` as ordered stages, each with every decision the
engine will act on, where each setting came from, the warnings to read first, and the costs.

`build_plan` (build.py) decides; the types are in model.py; the cost estimates in estimates.py.
Front end: no torch, no data read, so `train --plan` starts as fast as `validate`.
"""

from .build import attention_backend, build_plan, decide_precision, enabled_stages, with_throughput
from .estimates import BYTES_PER_TOKEN, OPTIMIZER_STATE_BYTES
from .model import BaseQuant, DeviceFacts, MemoryEstimate, PlanInputs, Precision, ReferenceMode, StagePlan, TrainingPlan

__all__ = ["BYTES_PER_TOKEN", "OPTIMIZER_STATE_BYTES", "BaseQuant", "DeviceFacts", "MemoryEstimate", "PlanInputs", "Precision",
           "ReferenceMode", "StagePlan", "TrainingPlan", "attention_backend", "build_plan", "decide_precision", "enabled_stages",
           "with_throughput"]
