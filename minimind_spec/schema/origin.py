"""Where a validated spec came from: its file, the `extends` chain, the warnings raised while
loading and checking it, and the distillation teacher's spec file the loader found.

The loader builds one `SpecOrigin` per spec and hands it to pydantic as validation context,
so a `Spec` gets its origin when it is constructed and is never changed afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import Problem


@dataclass(frozen=True)
class SpecOrigin:
    path: Path  # the file the user named
    chain: tuple[Path, ...]  # that file first, then each base it `extends`
    warnings: tuple[Problem, ...]  # from parsing (e.g. trailing commas) and from the cross-field rules
    teacher_spec: Path | None = None  # the distillation teacher's spec file, when distillation is on and it exists
