"""Pydantic models of the spec (one file per topic) and the JSON Schema they generate."""

from .architecture import IO, MAX_POSITIONS, Backbone, DeclaredModule, Hyperparams, MoE, RopeScaling, YarnRopeScaling
from .origin import SpecOrigin
from .spec import Ablation, FreeParameter, MergeOp, MergePoint, MergePointName, Spec, TotalParams, Trick
from .training import PROJECTIONS, LoRA, Optim, ProjectionName, Regularization, Techniques

__all__ = [
    "IO", "MAX_POSITIONS", "PROJECTIONS", "Ablation", "Backbone", "DeclaredModule", "FreeParameter", "Hyperparams", "LoRA",
    "MergeOp", "MergePoint", "MergePointName", "MoE", "Optim", "ProjectionName", "Regularization", "RopeScaling", "Spec", "SpecOrigin",
    "Techniques", "TotalParams", "Trick", "YarnRopeScaling",
]
