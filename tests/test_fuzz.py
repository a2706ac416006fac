"""Property test: any mutation of the shipped spec is accepted or rejected with located
problems, and never raises anything but SpecError through the whole front end."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minimind_spec import SpecError, build_graph, resolve
from minimind_spec.graph import check_graph
from minimind_spec.graph import check_declared
from minimind_spec.loader import LoadedDocument
from minimind_spec.loader import validate_document

from .conftest import SPEC, card_data

BASE = card_data()

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


@st.composite
def mutated_specs(draw) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
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
        if action == "delete":
            del parent[last]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = parent.pop(last)
        elif action == "number":
            parent[last] = draw(st.integers(-3, 10**9) | st.floats(-1e3, 1e12, allow_nan=False))
        else:
            parent[last] = draw(json_values)
    return doc


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_specs())
def test_mutations_are_accepted_or_rejected_with_paths(doc):
    json.dumps(doc)  # still a JSON document
    try:
        spec = validate_document(LoadedDocument(data=doc, path=SPEC))
        for variant in [None, *dict.fromkeys(spec.backbone.variants)]:
            resolved = resolve(spec, variant)
            graph = build_graph(resolved)
            assert check_graph(graph) == []
            check_declared(resolved, graph)
    except SpecError as error:
        assert error.problems
        for problem in error.problems:
            assert problem.path.startswith("/"), problem
            assert problem.message
