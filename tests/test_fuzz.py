"""Property test: any mutation of the shipped spec is either accepted, and then every variant
builds (graph checks pass, the model compiles on the meta device with the graph's parameter
count), or rejected with a SpecError whose every problem is located at a field the mutation
touched (at, above or below it) or names that field in its message (a cross-field rule); and
`build` on the same file fails with exactly the problems `validate` reported (they agree)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minimind_spec import SpecError, build_graph, resolve
from minimind_spec.engine import compile_graph
from minimind_spec.errors import pointer
from minimind_spec.graph import check_declared, check_graph, graph_costs
from minimind_spec.loader import LoadedDocument, validate_document
from minimind_spec.pipeline import build

from .conftest import SPEC, card_data

BASE = card_data()
WORKDIR = Path(tempfile.mkdtemp(prefix="fuzz-"))  # beside a copy of the teacher spec, as the card is
shutil.copy(SPEC.parent / "larger_model.json", WORKDIR / "larger_model.json")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**12) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12) | st.sampled_from(["RoPE", "LayerNorm", "MoE", "q_proj", "", "yarn", "cosine"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)


def all_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, sub in value.items():
            out += all_paths(sub, (*prefix, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            out += all_paths(sub, (*prefix, i))
    return out


PATHS = all_paths(BASE)


COMPILE_NODE_LIMIT = 2_000  # larger accepted graphs are checked up to the graph (a meta compile of 4096 layers is slow)


@st.composite
def mutated_specs(draw) -> tuple[dict[str, Any], list[str]]:
    """A mutated copy of the card's spec and the JSON Pointers its mutations touched."""
    doc = copy.deepcopy(BASE)
    touched: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        paths = all_paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        action = draw(st.sampled_from(["delete", "rename", "retype", "number"]))
        # a list element deleted or renamed shifts its siblings: the whole list counts as touched
        touched.append(pointer(*(path[:-1] if isinstance(parent, list) and action in ("delete", "rename") else path)))
        if action == "delete":
            del parent[last]
        elif action == "rename" and isinstance(parent, dict):
            new_key = draw(st.text(min_size=1, max_size=10))
            parent[new_key] = parent.pop(last)
            touched.append(pointer(*path[:-1], new_key))
        elif action == "number":
            parent[last] = draw(st.integers(-3, 10**9) | st.floats(-1e3, 1e12, allow_nan=False))
        else:
            parent[last] = draw(json_values)
    return doc, touched


def related(problem_path: str, message: str, touched: list[str]) -> bool:
    """Whether a problem is about a mutation: same branch of the document, or its message names the field."""
    for path in touched:
        if problem_path == path or problem_path.startswith(path + "/") or path.startswith(problem_path + "/") or not problem_path:
            return True
        field = path.rsplit("/", 1)[-1]
        if len(field) >= 3 and not field.isdigit() and re.search(rf"(?<![\w]){re.escape(field)}(?![\w])", message):
            return True
    return False


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_specs())
def test_accepted_mutations_build_and_rejected_ones_say_why(mutation):
    doc, touched = mutation
    json.dumps(doc)  # still a JSON document
    try:
        spec = validate_document(LoadedDocument(data=doc, path=SPEC))
    except SpecError as error:
        assert error.problems
        for problem in error.problems:
            assert problem.path.startswith("/") and problem.message, problem
            assert related(problem.path, problem.message, touched), (str(problem), touched)
        path = WORKDIR / "minimind.json"
        path.write_text(json.dumps(doc))
        try:
            build(path)
        except SpecError as built:
            assert [str(p) for p in built.problems] == [str(p) for p in error.problems]  # validate and build agree
        else:
            raise AssertionError("validate rejected a spec that build accepted")
        return
    for variant in [None, *dict.fromkeys(spec.backbone.variants)]:
        resolved = resolve(spec, variant)
        graph = build_graph(resolved)
        assert check_graph(graph) == []
        check_declared(resolved, graph)
        if graph.number_of_nodes() <= COMPILE_NODE_LIMIT:
            model = compile_graph(graph, device="meta")
            assert sum(p.numel() for p in model.parameters()) == graph_costs(graph, resolved.model).total_params
