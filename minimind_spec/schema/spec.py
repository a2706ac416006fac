"""The top-level `Spec` model: one field per section of the design card's JSON."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr

from .architecture import IO, Backbone, DeclaredModule, Hyperparams, MoE
from .base import NonEmptyStr, NonNegativeInt, SpecModel
from .origin import SpecOrigin
from .training import Optim, Regularization, Techniques

Trick = Literal["flash-attn2", "rope-scaling", "moe-aux-loss", "reasoning-token-masking", "kv-cache-pinning"]
MergePointName = Literal[
    "embedding_output", "attention_input", "attention_output", "mlp_input", "moe_experts", "mlp_output", "layer_output"
]
MergeOp = Literal["add", "gate", "concat", "mul"]


class TotalParams(SpecModel):
    all: NonNegativeInt | None = Field(default=None, description="Declared parameter total. Checked, never trusted.")
    trainable: NonNegativeInt | None = Field(default=None, description="Declared trainable parameters (the adapters when LoRA is on).")
    frozen: NonNegativeInt | None = Field(default=None, description="Declared frozen parameters.")


class MergePoint(SpecModel):
    from_: MergePointName = Field(alias="from", description="Tensor flowing into the merge.")
    to: MergePointName = Field(description="Tensor the merge produces.")
    op: MergeOp = Field(description="How the streams merge: residual add, MoE gate, ...")


class FreeParameter(SpecModel):
    name: NonEmptyStr = Field(description="Name, e.g. 'moe_gate'.")
    role: NonEmptyStr = Field(description="What it does, e.g. 'expert routing'.")
    shape: NonEmptyStr = Field(description="Declared shape, e.g. '(num_experts,)' or 'scalar'.")


class Ablation(SpecModel):
    name: NonEmptyStr = Field(description="Short name of the ablation.")
    expected_effect: NonEmptyStr = Field(description="What the change is expected to do.")


class Spec(SpecModel):
    """A MiniMind architecture spec, as written (before defaults are resolved)."""

    schema_: str | None = Field(default=None, alias="$schema", description="Optional JSON Schema reference for editors.")
    model_name: NonEmptyStr = Field(description="Name of the model.")
    task: Literal["Causal Language Modeling"] = Field(description="What the model is trained for.")
    backbone: Backbone = Field(description="Network family and its closed choices.")
    io: IO = Field(default_factory=IO, description="Declared inputs and outputs.")
    modules: list[DeclaredModule] = Field(default=[], description="Declared modules with parameter counts and shapes.")
    total_params: TotalParams = Field(default_factory=TotalParams, description="Declared parameter totals.")
    hyperparams: Hyperparams = Field(description="Sizes of the network.")
    moe: MoE = Field(default_factory=MoE, description="Mixture-of-experts settings, used by the MoE variant.")
    regularization: Regularization = Field(default_factory=Regularization, description="Regularisation.")
    optim: Optim = Field(default_factory=Optim, description="Optimizer and schedule.")
    techniques: Techniques = Field(default_factory=Techniques, description="Training techniques.")
    tricks: list[Trick] = Field(default=[], description="Implementation tricks.")
    concat_merge_points: list[MergePoint] = Field(default=[], description="Where streams merge (residual add, MoE gate).")
    free_parameters: list[FreeParameter] = Field(default=[], description="Named learned or tuned parameters outside the main modules.")
    ablation: Ablation | None = Field(default=None, description="Set by an ablation spec: its name and expected effect.")

    _origin: SpecOrigin | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        """Take the `SpecOrigin` the loader passes as validation context (`{"origin": ...}`)."""
        if isinstance(context, dict) and isinstance(context.get("origin"), SpecOrigin):
            self._origin = context["origin"]

    @property
    def origin(self) -> SpecOrigin | None:
        """Where this spec was loaded from, or None for a spec built in code."""
        return self._origin
