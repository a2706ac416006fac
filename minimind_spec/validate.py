"""Type-check a spec document: JSON Schema and pydantic, every problem located by JSON Pointer.

The second step of loading (`loader.load_spec` runs parse -> this -> the cross-field rules in
`rules.py`). Everything wrong is collected, each problem with its JSON Pointer and, for
misspelled keys and closed choices, a "did you mean". The JSON Schema is the one pydantic
generates (and `minimind-spec schema` writes), so an editor using the schema and this module
flag the same places. When fields are broken, `TypeCheck.stand_in` is the spec with those
fields set aside, so the cross-field rules can still run in the same pass.
"""

from __future__ import annotations

import copy
import json
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .errors import Problem, pointer
from .schema import Spec, SpecOrigin
from .suggest import closest, did_you_mean


@lru_cache(maxsize=1)
def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec document, generated from the pydantic models."""
    schema = Spec.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "MiniMind architecture spec"
    props = schema["properties"]
    props["extends"] = {"type": "string", "minLength": 1, "description": "Base spec this one patches (JSON Merge Patch, RFC 7386)."}
    return schema


@lru_cache(maxsize=1)
def _schema_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json_schema())


def schema_problems(data: Any) -> list[Problem]:
    """Problems the JSON Schema finds, as an editor would show them."""
    problems = []
    for err in _schema_validator().iter_errors(data):
        problems.append(Problem(pointer(*err.absolute_path), err.message))
    return problems


# ----- pydantic errors -> problems with JSON Pointers and suggestions -----

def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and `X | None` down to the interesting type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _field_by_key(model: type[BaseModel], key: str) -> tuple[str, Any] | None:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.alias or name, info.annotation
    return None


def _union_member_for_tag(annotation: Any, tag: str) -> type[BaseModel] | None:
    for member in typing.get_args(annotation):
        member = _unwrap(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            type_field = member.model_fields.get("type")
            if type_field is not None and tag in typing.get_args(type_field.annotation):
                return member
    return None


def _walk(loc: tuple[Any, ...]) -> tuple[str, Any, type[BaseModel] | None]:
    """Map a pydantic error location to (JSON Pointer, annotation there, enclosing model)."""
    parts: list[str | int] = []
    annotation: Any = Spec
    parent: type[BaseModel] | None = None
    for item in loc:
        current = _unwrap(annotation)
        origin = typing.get_origin(current)
        if isinstance(item, int) and origin in (list, tuple):
            args = typing.get_args(current)
            parts.append(item)
            annotation = args[item] if origin is tuple and item < len(args) else (args[0] if args else Any)
        elif isinstance(current, type) and issubclass(current, BaseModel):
            parent = current
            found = _field_by_key(current, str(item))
            parts.append(found[0] if found else str(item))
            annotation = found[1] if found else Any
        elif isinstance(item, str) and (member := _union_member_for_tag(current, item)) is not None:
            annotation = member  # discriminator tag in the location: not part of the document path
        else:
            parts.append(item)
            annotation = Any
    return pointer(*parts), annotation, parent


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _problem_from_pydantic(error: ErrorDetails) -> Problem:
    path, annotation, parent = _walk(tuple(error["loc"]))
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        options = [info.alias or name for name, info in parent.model_fields.items()] if parent else []
        return Problem(path, f"unknown key {key!r}", did_you_mean(key, options, f"allowed keys: {', '.join(options)}"))
    if kind == "missing":
        return Problem(path, f"missing required key {path.rsplit('/', 1)[-1]!r}")
    if kind == "literal_error":
        options = [str(o) for o in typing.get_args(_unwrap(annotation))] if typing.get_origin(_unwrap(annotation)) is Literal else []
        guess = closest(value, options) if isinstance(value, str) else None
        hint = f"did you mean {guess!r}?" if guess else (f"one of: {', '.join(map(repr, options))}" if options else None)
        return Problem(path, f"{_short(value)} is not allowed", hint)
    if kind == "none_required":
        return Problem(path, f"must be null, got {_short(value)}", "applies to convolutional or vision backbones only")
    if kind == "union_tag_not_found":
        tags = error.get("ctx", {}).get("discriminator", "'type'")
        options = [t.strip(" '") for t in str(_expected_tags(annotation)).split(",")] if _expected_tags(annotation) else []
        return Problem(path, f"missing the key {tags} (\"rope_type\" and \"kind\" are accepted for it too)",
                       f"one of: {', '.join(map(repr, options))}" if options else None)
    if kind == "union_tag_invalid":
        ctx = error.get("ctx", {})
        options = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",") if t.strip(" '")]
        tag = ctx.get("tag")
        guess = closest(tag, options) if isinstance(tag, str) else None
        hint = f"did you mean {guess!r}?" if guess else (f"one of: {', '.join(map(repr, options))}" if options else None)
        return Problem(path + "/type", f"{_short(tag)} is not allowed", hint)
    return Problem(path, f"{error['msg']}, got {_short(value)}" if not isinstance(value, dict) else error["msg"])


def _expected_tags(annotation: Any) -> str | None:
    """The tags of a discriminated union annotation ('none', 'linear', ...), or None."""
    members = typing.get_args(_unwrap(annotation))
    tags = []
    for member in members:
        field = getattr(member, "model_fields", {}).get("type")
        if field is not None and typing.get_origin(field.annotation) is Literal:
            tags += [repr(t) for t in typing.get_args(field.annotation)]
    return ", ".join(tags) or None


def model_problems(data: dict[str, Any]) -> tuple[Spec | None, list[Problem]]:
    """Validate with pydantic in strict JSON mode; every error becomes a located problem."""
    try:
        return Spec.model_validate_json(json.dumps(data), strict=True), []
    except ValidationError as exc:
        return None, [_problem_from_pydantic(e) for e in exc.errors(include_url=False)]


@dataclass(frozen=True)
class TypeCheck:
    """The outcome of type-checking one document."""

    spec: Spec | None  # the validated spec, None when any problem was found
    problems: tuple[Problem, ...]  # schema and pydantic problems, each once
    stand_in: Spec | None  # `spec`, or the document with its broken fields set aside (None if even that fails)
    placeholders: tuple[str, ...] = ()  # JSON Pointers the stand-in filled in (missing or broken required fields)
    stand_in_high: Spec | None = None  # the same stand-in with its numeric placeholders at their largest allowed values


def check_types(data: dict[str, Any]) -> TypeCheck:
    """Validate with pydantic and the JSON Schema; never raises for a bad document."""
    spec, problems = model_problems(data)
    seen = {p.path for p in problems}
    problems += [p for p in schema_problems(data) if not covered(p.path, seen)]
    if spec is not None and not problems:
        return TypeCheck(spec, (), spec)
    stand_in, placeholders = _without_bad_fields(data)
    high, _ = _without_bad_fields(data, high=True) if placeholders else (None, ())
    return TypeCheck(None, tuple(problems), stand_in, placeholders, high)


def spec_with_origin(data: dict[str, Any], origin: SpecOrigin) -> Spec:
    """Build the final `Spec` of a document that passed every check, with its origin attached."""
    return Spec.model_validate_json(json.dumps(data), strict=True, context={"origin": origin})


def _placeholder(annotation: Any, high: bool = False, bounds: list[Any] | None = None) -> Any:
    """A value of the field's type: the first option of a closed choice, an empty list or object,
    "placeholder" for text, and for numbers 1 or, with `high`, the largest the field allows
    (10**6 when unbounded). Rule findings that change between the two are about the placeholder."""
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return typing.get_args(annotation)[0]
    if origin in (list, tuple):
        return []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {}
    if annotation in (int, float) and high:
        highest = [b.le for b in bounds or [] if getattr(b, "le", None) is not None]
        below = [b.lt - 1 for b in bounds or [] if getattr(b, "lt", None) is not None]
        return annotation((highest or below or [10**6])[0])
    return {bool: False, int: 1, float: 1.0, str: "placeholder"}.get(annotation, None)


def _without_bad_fields(data: dict[str, Any], high: bool = False) -> tuple[Spec | None, tuple[str, ...]]:
    """A stand-in spec for the cross-field rules: the document with every failing field dropped
    (a closed choice set to its first option) and every missing or dropped required field given
    a placeholder. Returns it (None if that still fails) and the JSON Pointers of the
    placeholders: rule findings about those fields would be artefacts, the caller leaves them out."""
    doc = copy.deepcopy(data)
    filled: list[str] = []
    for _ in range(6):  # a placeholder object may reveal missing keys of its own
        try:
            return Spec.model_validate_json(json.dumps(doc), strict=True), tuple(filled)
        except ValidationError as exc:
            errors = sorted(exc.errors(include_url=False), key=lambda e: -len(e["loc"]))
        for error in errors:
            path, annotation, _ = _walk(tuple(error["loc"]))
            parts = [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]
            parent: Any = doc
            for part in parts[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else (
                    parent[int(part)] if isinstance(parent, list) and part.isdigit() and int(part) < len(parent) else None)
            if not isinstance(parent, dict) or not parts:
                return None, ()
            options = typing.get_args(_unwrap(annotation)) if typing.get_origin(_unwrap(annotation)) is Literal else ()
            if error["type"] == "literal_error" and options:
                parent[parts[-1]] = options[0]
            elif error["type"] == "missing":
                model = _walk(tuple(error["loc"][:-1]))[1] if len(error["loc"]) > 1 else Spec
                info = getattr(_unwrap(model), "model_fields", {}).get(str(error["loc"][-1])) if isinstance(
                    _unwrap(model), type) else None
                parent[parts[-1]] = _placeholder(annotation, high, list(info.metadata) if info is not None else None)
                filled.append(path)
            else:
                parent.pop(parts[-1], None)  # a required field dropped here comes back as missing next round
    return None, ()


def covered(path: str, seen: set[str]) -> bool:
    """Whether a problem was already reported at, above or below this JSON Pointer."""
    return any(s == path or s.startswith(path + "/") or path.startswith(s + "/") for s in seen)
