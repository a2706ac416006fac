"""Load a spec file into a validated `Spec`: the first stage of the pipeline.

`load_spec(path)` = read and parse (`load_document`) -> type checks (`validate.check_types`)
-> cross-field rules (`rules.rule_problems`), with every problem of the last two steps
reported together. This module is the only one that reads spec files, the distillation
teacher's included, so validation and the rules work on values alone.

Accepts a `.json` file, or a design card (`.md`/`.txt`) whose first ```json fenced block is
the spec. JSON syntax errors name line and column in the file the user opened. A trailing
comma is tolerated with a warning (the design card's own spec has one); comments, NaN,
duplicate keys and other non-JSON are errors. `"extends": "base.json"` applies the document
as a JSON Merge Patch (RFC 7386) on top of its base, recursively; a cycle is an error.

Raw dicts live only in this module: `load_spec` hands back a typed `Spec`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Problem, SpecError, pointer, warning
from .rules import TeacherFacts, rule_problems
from .schema import Spec, SpecOrigin
from .validate import check_types, covered, spec_with_origin

CARD_SUFFIXES = {".md", ".txt", ".markdown"}
_FENCE = re.compile(r"^```json[ \t]*\r?\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class LoadedDocument:
    """A spec document after parsing and `extends` merging, before validation."""

    data: dict[str, Any]  # the merged document
    path: Path
    warnings: tuple[Problem, ...] = ()
    chain: tuple[Path, ...] = ()  # this file first, then its bases
    own_data: tuple[dict[str, Any], ...] = ()  # what each file of `chain` itself says (before merging)

    def declared_in(self, *keys: str) -> Path | None:
        """The nearest file of the chain whose own text sets the value at `keys`; None if none does."""
        for file, data in zip(self.chain, self.own_data):
            value: Any = data
            for key in keys:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                return file
        return None


class _NotJson(ValueError):
    pass


def read_text(path: Path) -> str:
    """Read a spec file as UTF-8, turning every way a file can be unusable into a SpecError."""
    source = str(path)
    if not path.exists():
        raise SpecError(Problem("", f"file not found: {path}"), source)
    if path.is_dir():
        raise SpecError(Problem("", f"{path} is a directory, not a spec file"), source)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(Problem("", f"cannot read {path}: {exc.strerror or exc}"), source) from None
    if not raw.strip():
        raise SpecError(Problem("", "file is empty"), source)
    if b"\x00" in raw:
        raise SpecError(Problem("", "file is binary (contains NUL bytes), not a JSON spec"), source)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(Problem("", f"invalid UTF-8 at byte {exc.start} (line {line})", "save the file as UTF-8"), source) from None


def extract_card_json(text: str, source: str) -> tuple[str, int]:
    """The first ```json block of a design card and the number of lines before it."""
    match = _FENCE.search(text)
    if match is None:
        raise SpecError(Problem("", "design card has no ```json fenced block", "put the spec in a ```json ... ``` block"), source)
    return match.group(1), text[: match.start(1)].count("\n")


def _strip_trailing_commas(text: str, line_offset: int) -> tuple[str, list[Problem]]:
    """Blank out commas that directly precede `}` or `]` (outside strings), with a warning each."""
    chars = list(text)
    warnings: list[Problem] = []
    in_string = escaped = False
    for i, ch in enumerate(chars):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch == ",":
            j = i + 1
            while j < len(chars) and chars[j] in " \t\r\n":
                j += 1
            if j < len(chars) and chars[j] in "}]":
                chars[i] = " "
                line = text.count("\n", 0, i) + 1 + line_offset
                warnings.append(warning("", f"trailing comma at line {line} ignored", "JSON does not allow it; remove it"))
    return "".join(chars), warnings


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _NotJson(f"duplicate key {key!r}")
        out[key] = value
    return out


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"number {text} is out of range (not finite)")
    return value


def _reject_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not valid JSON")


def parse_json(text: str, source: str, line_offset: int = 0) -> tuple[Any, list[Problem]]:
    """Parse JSON text; errors give line and column in the original file."""
    cleaned, warnings = _strip_trailing_commas(text, line_offset)
    try:
        data = json.loads(
            cleaned,
            object_pairs_hook=_reject_duplicates,
            parse_float=_finite_float,
            parse_constant=_reject_constant,
        )
    except json.JSONDecodeError as exc:
        line = exc.lineno + line_offset
        raise SpecError(Problem("", f"JSON syntax error at line {line}, column {exc.colno}: {exc.msg}"), source) from None
    except _NotJson as exc:
        raise SpecError(Problem("", f"not valid JSON: {exc}"), source) from None
    return data, warnings


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON Merge Patch: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def load_document(path: str | Path, _stack: tuple[Path, ...] = ()) -> LoadedDocument:
    """Read, parse and `extends`-merge one spec file into a plain document."""
    path = Path(path)
    source = str(path)
    text = read_text(path)
    line_offset = 0
    if path.suffix.lower() in CARD_SUFFIXES:
        text, line_offset = extract_card_json(text, source)
    data, warnings = parse_json(text, source, line_offset)
    if not isinstance(data, dict):
        raise SpecError(Problem("", f"a spec is a JSON object, got {type(data).__name__}"), source)
    warnings = [Problem(w.path, f"{path.name}: {w.message}", w.hint, w.severity) for w in warnings]
    _accept_alias_spellings(data)

    here = path.resolve()
    chain: tuple[Path, ...] = (path,)
    own_data: tuple[dict[str, Any], ...] = (data,)
    base_ref = data.pop("extends", None)
    if base_ref is not None:
        if not isinstance(base_ref, str) or not base_ref.strip():
            raise SpecError(Problem(pointer("extends"), "must be a non-empty relative path to the base spec"), source)
        base_path = (path.parent / base_ref)
        if base_path.resolve() in (*_stack, here):
            names = " -> ".join(p.name for p in (*_stack, here, base_path.resolve()))
            raise SpecError(Problem(pointer("extends"), f"extends cycle: {names}"), source)
        base = load_document(base_path, (*_stack, here))
        data = merge_patch(base.data, data)
        warnings = [*base.warnings, *warnings]
        chain, own_data = chain + base.chain, own_data + base.own_data
    return LoadedDocument(data=data, path=path, warnings=tuple(warnings), chain=chain, own_data=own_data)


ROPE_TYPE_ALIASES = ("rope_type", "kind")  # Hugging Face configs say rope_type; "kind" is what ResolvedSpec calls it


def _accept_alias_spellings(data: dict[str, Any]) -> None:
    """Rename, in one file's own document (before `extends` merges it), the spellings other tools
    use to the spec's: `hyperparams.rope_scaling.rope_type` / `.kind` -> `.type`. A document that
    gives two of them is left alone, for validation to report."""
    hyperparams = data.get("hyperparams")
    scaling = hyperparams.get("rope_scaling") if isinstance(hyperparams, dict) else None
    if isinstance(scaling, dict) and "type" not in scaling:
        given = [alias for alias in ROPE_TYPE_ALIASES if alias in scaling]
        if len(given) == 1:
            scaling["type"] = scaling.pop(given[0])


def load_spec(path: str | Path) -> Spec:
    """Load, merge and validate a spec file; raises SpecError listing every problem found."""
    return validate_document(load_document(path))


def validate_document(document: LoadedDocument) -> Spec:
    """Turn a loaded document into a `Spec`, or raise SpecError with every problem found.

    When some fields have the wrong type, the cross-field rules still run on the document with
    those fields set aside, so one run reports both kinds of problem; rule findings at or
    around a field that already failed are left out (they would repeat it)."""
    typed = check_types(document.data)
    problems = list(typed.problems)
    warnings: list[Problem] = []
    teacher = None
    if typed.stand_in is not None:
        teacher = find_teacher(typed.stand_in, document)
        errors, warnings = rule_problems(typed.stand_in, teacher)
        failed = {p.path for p in problems}
        if typed.placeholders:  # a finding that changes with the placeholders' values is about them, not the spec
            high = rule_problems(typed.stand_in_high, teacher)[0] if typed.stand_in_high is not None else []
            errors = [p for p in errors if str(p) in {str(q) for q in high}]
        stand_ins = {path.rsplit("/", 1)[-1] for path in typed.placeholders if len(path.rsplit("/", 1)[-1]) > 2}
        problems += [p for p in errors if not covered(p.path, failed)
                     and not any(re.search(rf"\b{re.escape(name)}\b", p.message) for name in stand_ins)]
    if problems:
        raise SpecError(problems, str(document.path))
    origin = SpecOrigin(document.path, document.chain, (*document.warnings, *warnings),
                        teacher.path if teacher is not None else None)
    return spec_with_origin(document.data, origin)


def find_teacher(spec: Spec, document: LoadedDocument) -> TeacherFacts | None:
    """Find and read the distillation teacher's spec (None when distillation is off).

    `teacher_spec` is a path relative to the file that sets it; without it the teacher is
    `<teacher>.json` beside the file that configures distillation (a base spec, when an
    ablation inherits the setting through `extends`)."""
    distill = spec.techniques.distill
    if not distill.enabled:
        return None
    if distill.teacher_spec is not None:
        where = pointer("techniques", "distill", "teacher_spec")
        declaring = document.declared_in("techniques", "distill", "teacher_spec") or document.path
        path = Path(os.path.normpath(declaring.parent / distill.teacher_spec))
    else:
        where = pointer("techniques", "distill", "teacher")
        declaring = (document.declared_in("techniques", "distill", "teacher")
                     or document.declared_in("techniques", "distill", "enabled") or document.path)
        path = Path(os.path.normpath(declaring.parent / f"{distill.teacher}.json"))
        if not path.is_file():
            return TeacherFacts(None, where)
    try:
        teacher = check_types(load_document(path).data)
    except SpecError as exc:
        return TeacherFacts(path, where, problem=f"cannot be loaded: {exc.problems[0]}")
    if teacher.spec is None:
        return TeacherFacts(path, where, problem=f"is invalid: {teacher.problems[0]}")
    return TeacherFacts(path, where, vocab=teacher.spec.hyperparams.vocab)
