"""Pydantic models of the spec (one file per topic) and the JSON Schema they generate."""

from .architecture import IO, Backbone, DeclaredModule, Hyperparams, MoE, RopeScaling
from .spec import Ablation, FreeParameter, MergePoint, Spec, TotalParams, Trick
from .training import PROJECTIONS, LoRA, Optim, Regularization, Techniques

__all__ = [
    "IO", "Ablation", "Backbone", "DeclaredModule", "FreeParameter", "Hyperparams", "LoRA", "MergePoint", "MoE",
    "Optim", "PROJECTIONS", "Regularization", "RopeScaling", "Spec", "Techniques", "TotalParams", "Trick",
]
