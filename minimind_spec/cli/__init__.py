"""The `minimind-spec` command: one module per group of commands, all on one typer app."""

from __future__ import annotations

from .app import app
from . import spec_commands  # noqa: F401  (validate, explain, schema, build)
from . import render_commands  # noqa: F401  (render, diff)
from . import train_commands  # noqa: F401  (train)
from . import data_commands  # noqa: F401  (tokenizer train)
from . import model_commands  # noqa: F401  (generate, export, lora merge)
from . import study_commands  # noqa: F401  (ablate)
from . import eval_commands  # noqa: F401  (eval)
from . import serve_commands  # noqa: F401  (serve, chat)


def main() -> None:
    app()


__all__ = ["app", "main"]
