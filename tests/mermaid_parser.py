"""Run the real `mermaid` npm package (tests/js/parse_mermaid.mjs, under Node) on diagram texts.

`make test` installs the npm packages (`npm ci` at the repository root); without Node or
without them, tests that need the parser skip with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "js" / "parse_mermaid.mjs"


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed: Mermaid output is not checked with the real parser"
    if not (ROOT / "node_modules" / "mermaid" / "package.json").is_file():
        return "npm packages are not installed (run `npm ci` at the repository root, as `make test` does)"
    return None


MISSING = _missing()
needs_mermaid = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed: DOT output is not checked")


def parse_mermaid(texts: dict[str, str], workers: int = 2) -> dict[str, dict]:
    """Parse every text (name -> Mermaid source), split over `workers` Node processes run side by side;
    name -> {"ok": ..., "type": ...} or {"ok": False, "error": ...}."""
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for i, (name, text) in enumerate(texts.items()):
            path = Path(tmp) / f"{i}.mmd"
            path.write_text(text, encoding="utf-8")
            files[str(path)] = name
        paths = sorted(files, key=lambda f: -len(texts[files[f]]))  # deal the big ones out first
        procs = [subprocess.Popen(["node", str(SCRIPT), *paths[w::workers]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=ROOT) for w in range(min(workers, len(paths)))]
        results, errors = [], []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            errors.append(err[-2000:])
    assert len(results) == len(texts), errors
    return {files[r["file"]]: r for r in results}
