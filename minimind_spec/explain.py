"""Flatten a `ResolvedSpec` into rows of (field, value, provenance) for `explain` and `--out`.

Model values come from the resolver's provenance record; training sections (optim,
regularization, techniques, tricks) are read from the validated spec, where a field is
`spec:/...` if the document set it and `default` otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .errors import pointer
from .config import ResolvedSpec

UNRESOLVED_SECTIONS = (("techniques", "adapters"),)  # validated and shown, not compiled


@dataclass(frozen=True)
class ExplainRow:
    field: str
    value: Any
    provenance: str


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [item for key, sub in value.items() for item in _flatten(f"{prefix}.{key}", sub)]
    return [(prefix, list(value) if isinstance(value, tuple) else value)]


def _provenance(key: str, provenance: dict[str, str]) -> str:
    probe = key
    while probe:
        if probe in provenance:
            return provenance[probe]
        probe = probe.rpartition(".")[0]
    return "default"


def _spec_rows(section: BaseModel, path: tuple[str, ...]) -> list[ExplainRow]:
    rows = []
    for name, info in type(section).model_fields.items():
        key = info.alias or name
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            rows += _spec_rows(value, (*path, key))
            continue
        where = "spec:" + pointer(*path, key) if name in section.model_fields_set else "default"
        rows.append(ExplainRow(".".join((*path, key)), list(value) if isinstance(value, tuple) else value, where))
    return rows


def explain_rows(resolved: ResolvedSpec) -> list[ExplainRow]:
    rows = [ExplainRow("name", resolved.name, "spec:/model_name"),
            ExplainRow("variant", resolved.variant or "base", "command line" if resolved.variant else "default")]
    for key, value in _flatten("model", dataclasses.asdict(resolved.model)):
        rows.append(ExplainRow(key, value, _provenance(key, resolved.provenance)))
    if resolved.training is not None:
        for key, value in _flatten("training", dataclasses.asdict(resolved.training)):
            shown = str(value) if key == "training.distill.teacher_spec" and value is not None else value
            rows.append(ExplainRow(key, shown, _provenance(key, resolved.provenance)))
    spec = resolved.spec
    if spec is None:  # rebuilt from an exported config.json: only the model values exist
        return rows
    for path in UNRESOLVED_SECTIONS:
        section = spec
        for part in path:
            section = getattr(section, part)
        rows += _spec_rows(section, path)
    rows.append(ExplainRow("tricks", list(spec.tricks), "spec:/tricks" if "tricks" in spec.model_fields_set else "default"))
    return rows


def resolved_to_json(resolved: ResolvedSpec) -> dict[str, Any]:
    """The resolved spec as JSON: every value with its provenance."""
    return {
        "name": resolved.name,
        "variant": resolved.variant,
        "values": {row.field: {"value": row.value, "provenance": row.provenance} for row in explain_rows(resolved)},
        "warnings": [p.as_dict() for p in resolved.warnings],
    }
