"""Problems found in a spec, and the one exception that carries them.

Every stage of the front end (load, validate, resolve, graph checks, declared-vs-compiled)
reports what it finds as `Problem`s: a JSON Pointer into the spec, a message, an optional
hint. Errors are collected and raised together as one `SpecError`; warnings travel with the
stage's output. The CLI turns a `SpecError` into one line per problem and exit code 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, located by a JSON Pointer such as `/hyperparams/d_model`."""

    path: str
    message: str
    hint: str | None = None
    severity: Severity = Severity.ERROR

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} ({self.hint})" if self.hint else text

    def as_dict(self) -> dict[str, str | None]:
        return {"path": self.path, "message": self.message, "hint": self.hint, "severity": str(self.severity)}


def warning(path: str, message: str, hint: str | None = None) -> Problem:
    return Problem(path, message, hint, Severity.WARNING)


class SpecError(Exception):
    """A spec that cannot be used; `problems` lists every reason found, not only the first."""

    def __init__(self, problems: list[Problem] | Problem, source: str | None = None):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        self.source = source
        super().__init__(self.summary())

    def summary(self) -> str:
        head = f"{self.source}: " if self.source else ""
        count = len(self.problems)
        lines = [f"{head}{count} problem{'s' if count != 1 else ''} in spec"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def pointer(*parts: str | int) -> str:
    """JSON Pointer (RFC 6901) for a sequence of keys and indices."""
    escaped = (str(p).replace("~", "~0").replace("/", "~1") for p in parts)
    return "".join("/" + p for p in escaped)


class InputError(ValueError):
    """An input other than a spec that cannot be used (a data file, a checkpoint); the message
    names the file (and line). The CLI prints it as one line and exits 2."""
