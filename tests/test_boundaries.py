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


FRONT_END = [name for name in MODULES if name.startswith("minimind_spec.")
             and not _within(name, ("minimind_spec.engine", "minimind_spec.cli"))]
ENTRY_POINTS = [name for name in MODULES if name == "minimind_spec" or _within(name, ("minimind_spec.cli",))]


def import_cycles(imports: list[Import]) -> list[list[str]]:
    graph = nx.DiGraph()
    graph.add_nodes_from(MODULES)
    graph.add_edges_from((imp.source, imp.target) for imp in imports if imp.target in MODULES and imp.target != imp.source)
    return list(nx.simple_cycles(graph))


def direction_violations(imports: list[Import]) -> list[Import]:
    """Imports against the one-way flow: builders -> spec side, front end -> torch side, an entry
    point importing the torch side at module level, engine -> CLI."""
    return [imp for imp in imports if
            (imp.source.startswith("builders") and _within(imp.target, ("minimind_spec",)))
            or (imp.source in FRONT_END and _within(imp.target, TORCH_SIDE))
            or (imp.source in ENTRY_POINTS and _within(imp.target, TORCH_SIDE) and not imp.lazy)
            or (_within(imp.source, ("minimind_spec.engine",)) and _within(imp.target, ("minimind_spec.cli",)))]


def test_no_import_cycles():
    cycles = import_cycles(IMPORTS)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join([*c, c[0]]) for c in cycles)


def test_dependencies_point_one_way():
    assert direction_violations(IMPORTS) == []


PLANTED = {
    "front end imports the engine": Import("minimind_spec.rules", "minimind_spec.engine.compile", True, 1),
    "front end imports torch": Import("minimind_spec.graph.costs", "torch", False, 1),
    "builders import the spec": Import("builders.model", "minimind_spec.graph", False, 1),
    "CLI imports torch at module level": Import("minimind_spec.cli.app", "torch", False, 1),
    "engine imports the CLI": Import("minimind_spec.engine.compile", "minimind_spec.cli.app", True, 1),
}


@pytest.mark.parametrize("planted", PLANTED.values(), ids=PLANTED.keys())
def test_a_planted_violation_is_caught(planted):
    assert direction_violations([*IMPORTS, planted]) == [planted]


def test_a_planted_cycle_is_caught():
    # validate -> loader would close loader -> validate
    assert import_cycles([*IMPORTS, Import("minimind_spec.validate", "minimind_spec.loader", True, 1)])


def test_lazy_imports_in_commands_are_allowed():
    lazy = [imp for imp in IMPORTS if imp.source in ENTRY_POINTS and _within(imp.target, TORCH_SIDE)]
    assert lazy and all(imp.lazy for imp in lazy)  # the CLI and the package do reach the engine, inside functions


def test_front_end_modules_and_commands_run_without_torch(tmp_path):
    ablation = ROOT / "spec" / "ablations" / "lora_rank4.json"
    front_end = sorted(name for name in MODULES if name.startswith("minimind_spec")
                       and not _within(name, ("minimind_spec.engine", "minimind_spec.__main__")))  # the CLI included
    code = f"""
import importlib, sys
for name in {front_end!r}:
    importlib.import_module(name)
from typer.testing import CliRunner
from minimind_spec.cli import app
runner = CliRunner()
for args in (["validate", {str(SPEC)!r}], ["explain", {str(SPEC)!r}], ["render", {str(SPEC)!r}, "--variant", "MoE"],
             ["diff", {str(SPEC)!r}, {str(ablation)!r}], ["build", {str(SPEC)!r}], ["schema", "--out", {str(tmp_path / "s.json")!r}],
             ["train", {str(SPEC)!r}, "--plan"], ["train", {str(SPEC)!r}, "--plan", "--json"],
             ["ablate", {str(SPEC)!r}, {str(ablation)!r}, "--dry-run", "--out", {str(tmp_path / "study")!r}]):
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 1), (args, result.output)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "safetensors", "builders") or m.startswith("minimind_spec.engine"))
assert not loaded, loaded
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_the_data_side_of_the_engine_loads_without_torch():
    modules = sorted(name for name in MODULES if _within(name, ("minimind_spec.engine.data",)))
    assert modules
    code = (f"import importlib, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
            "assert 'torch' not in sys.modules, 'engine.data imported torch'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
