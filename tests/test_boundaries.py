"""The architecture's boundaries, checked on the source: no import cycles inside
`minimind_spec/` or `builders/`, dependencies that point one way (CLI -> front end ->
engine -> builders), and a front end that runs its commands without ever loading torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

from .conftest import ROOT, SPEC

PACKAGES = ("minimind_spec", "builders")
TORCH_SIDE = ("torch", "safetensors", "builders", "minimind_spec.engine")


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (the most specific one that exists)
    lazy: bool  # inside a function (runs only when called)
    line: int


def module_files() -> dict[str, Path]:
    """Every module of the two packages by dotted name."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = module_files()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports_of(name: str) -> list[Import]:
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(Import(name, alias.name, lazy, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = name.split(".") if _is_package(name) else name.split(".")[:-1]
                    package = package[: len(package) - (child.level - 1)]
                    base = ".".join([*package, *([child.module] if child.module else [])])
                for alias in child.names:
                    candidate = f"{base}.{alias.name}"
                    found.append(Import(name, candidate if candidate in MODULES else base, lazy, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


IMPORTS = [imp for name in MODULES for imp in _imports_of(name)]


def _within(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p or target.startswith(p + ".") for p in prefixes)


def test_the_import_analysis_sees_the_packages():
    assert {"minimind_spec.loader", "minimind_spec.engine.compile", "builders.model", "builders.inference.generate"} <= set(MODULES)
    assert Import("minimind_spec.engine.compile", "builders.model", False, 0).target in {i.target for i in IMPORTS}


def test_no_import_cycles():
    graph = nx.DiGraph()
    graph.add_nodes_from(MODULES)
    graph.add_edges_from((imp.source, imp.target) for imp in IMPORTS if imp.target in MODULES and imp.target != imp.source)
    cycles = list(nx.simple_cycles(graph))
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join([*c, c[0]]) for c in cycles)


def test_builders_never_import_the_spec_side():
    offenders = [imp for imp in IMPORTS if imp.source.startswith("builders") and _within(imp.target, ("minimind_spec",))]
    assert offenders == []


def test_the_front_end_never_imports_the_torch_side():
    front_end = [name for name in MODULES if name.startswith("minimind_spec.")
                 and not _within(name, ("minimind_spec.engine", "minimind_spec.cli"))]
    offenders = [imp for imp in IMPORTS if imp.source in front_end and _within(imp.target, TORCH_SIDE)]
    assert offenders == []


def test_entry_points_import_the_torch_side_only_inside_commands():
    entry_points = [name for name in MODULES if name == "minimind_spec" or _within(name, ("minimind_spec.cli",))]
    offenders = [imp for imp in IMPORTS if imp.source in entry_points and _within(imp.target, TORCH_SIDE) and not imp.lazy]
    assert offenders == []


def test_the_engine_never_imports_the_cli():
    offenders = [imp for imp in IMPORTS if _within(imp.source, ("minimind_spec.engine",)) and _within(imp.target, ("minimind_spec.cli",))]
    assert offenders == []


@pytest.mark.parametrize("module", ["builders.model", "minimind_spec.engine"])
def test_the_analysis_would_catch_a_violation(module):
    # the torch side does import torch: the same analysis that finds none in the front end finds these
    assert any(imp.source == module or imp.source.startswith(module + ".") for imp in IMPORTS if _within(imp.target, ("torch",)))


def test_front_end_modules_and_commands_run_without_torch(tmp_path):
    ablation = ROOT / "spec" / "ablations" / "lora_rank4.json"
    front_end = sorted(name for name in MODULES if name.startswith("minimind_spec")
                       and not _within(name, ("minimind_spec.engine", "minimind_spec.__main__")))
    code = f"""
import importlib, sys
for name in {front_end!r}:
    importlib.import_module(name)
from typer.testing import CliRunner
from minimind_spec.cli import app
runner = CliRunner()
for args in (["validate", {str(SPEC)!r}], ["explain", {str(SPEC)!r}], ["render", {str(SPEC)!r}, "--variant", "MoE"],
             ["diff", {str(SPEC)!r}, {str(ablation)!r}], ["build", {str(SPEC)!r}], ["schema", "--out", {str(tmp_path / "s.json")!r}]):
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 1), (args, result.output)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "safetensors", "builders") or m.startswith("minimind_spec.engine"))
assert not loaded, loaded
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
