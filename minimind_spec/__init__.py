"""minimind-spec: a declarative, spec-driven compiler for MiniMind language models.

Pipeline: load_spec (parse + validate + rules) -> resolve -> build_graph -> checks ->
compile_model. The front end imports no torch; `compile_model` loads the PyTorch side
(`minimind_spec.engine`) on first use.
"""

from __future__ import annotations

from typing import Any

from .errors import Problem, SpecError
from .graph import build_graph
from .loader import load_spec
from .resolve import resolve

__all__ = ["Problem", "SpecError", "build_graph", "compile_model", "load_spec", "resolve"]


def __getattr__(name: str) -> Any:
    if name == "compile_model":
        from .engine import compile_model

        return compile_model
    raise AttributeError(f"module 'minimind_spec' has no attribute {name!r}")
