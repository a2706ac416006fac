"""Arguments and options that several commands share, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

SpecPath = Annotated[Path, typer.Argument(
    help="Spec file: a .json spec, or a design card (.md/.txt) with a ```json block.", show_default=False)]
Variant = Annotated[str | None, typer.Option(
    "--variant", "-v", help="Variant to build, e.g. MoE or 'Flash Attention' (default: the spec's build_variant, "
    "else the base model).", show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON report instead of tables.")]
