"""The front end in one call: load -> resolve -> graph -> checks -> costs -> declared-vs-compiled.

`build(path)` is what `minimind-spec build` runs and what tests and benchmarks time. It
raises SpecError for unusable input, for a broken graph, and (with strict=True) for
declared numbers the graph contradicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from .config import ResolvedSpec
from .errors import Problem, Severity, SpecError
from .graph import Costs, build_graph, check_declared, check_graph, graph_costs
from .loader import load_spec
from .resolve import resolve


@dataclass(frozen=True)
class BuildResult:
    resolved: ResolvedSpec
    graph: nx.DiGraph
    costs: Costs
    warnings: tuple[Problem, ...]  # from loading and validation
    declared: tuple[Problem, ...]  # declared-vs-compiled mismatches


def build(path: str | Path, variant: str | None = None, strict: bool = False) -> BuildResult:
    spec = load_spec(path)
    resolved = resolve(spec, variant)
    graph = build_graph(resolved)
    broken = check_graph(graph)
    if broken:
        raise SpecError(broken, str(path))
    costs = graph_costs(graph, resolved.model)
    declared = check_declared(resolved, graph, costs)
    if strict and declared:
        raise SpecError([Problem(p.path, p.message, p.hint, Severity.ERROR) for p in declared], str(path))
    return BuildResult(resolved, graph, costs, tuple(resolved.warnings), tuple(declared))
