"""Shared pydantic configuration and constrained types for the spec models.

Every spec model is strict (no silent "512" -> 512 coercion, so pydantic and the exported
JSON Schema reject the same documents), frozen, and forbids unknown keys.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

NonEmptyStr = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]


class SpecModel(BaseModel):
    """Base of every spec section: strict, immutable, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        allow_inf_nan=False,
        populate_by_name=True,
        use_attribute_docstrings=False,
    )
