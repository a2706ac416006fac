"""Semantic diff of two specs: what changed in the spec, in the graph, and in the costs.

Not a text diff: both specs are loaded, validated, resolved and built into module graphs,
then compared at every level:

(a) spec fields, by JSON Pointer, old -> new, each side tagged with where the value came from
    ("spec" when the file, or a base it extends, sets it; "default" otherwise), plus resolved
    values whose provenance says more (a value derived from `tricks` on one side and set
    explicitly on the other);
(b) graph nodes added, removed or changed (op type, shapes, parameters, attributes), grouped
    across layers and experts with the index replaced by `*`;
(c) cost deltas read off the graphs: parameters, FLOPs per token, KV cache, activations;
(d) the expected effect an ablation spec states.

When one spec builds a variant through `backbone.build_variant` (an ablation of the MoE
variant) and the other offers that variant without choosing one, the other is built as the
same variant, so the diff shows the ablation rather than the variant switch; a note says so.
"""

from __future__ import annotations

import json

import re
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import networkx as nx
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from .config import ResolvedSpec
from .errors import pointer
from .graph import Costs, OpNode, attrs_dict, build_graph, default_trainable_roles, graph_costs, nodes
from .loader import load_spec
from .resolve import resolve
from .schema import Spec

ABSENT = "absent"
_LAYER = re.compile(r"\.layers\.\d+\.")
_EXPERT = re.compile(r"\.(experts|shared_experts)\.\d+\.")
_SKIP_FIELDS = {"/ablation", "/$schema"}


@dataclass(frozen=True)
class FieldChange:
    """A spec field whose value (or whether it is set explicitly) differs."""

    path: str  # JSON Pointer, e.g. /techniques/lora/rank
    old: Any
    new: Any
    old_source: str  # "spec" | "default" | "absent"
    new_source: str

    @property
    def value_changed(self) -> bool:
        """False when only the source differs (a default written out, or a value left to its default)."""
        return self.old != self.new


@dataclass(frozen=True)
class ResolvedChange:
    """A resolved value (see `ResolvedSpec.provenance`) that differs in value or provenance."""

    key: str  # e.g. model.moe.aux_loss
    old: Any
    new: Any
    old_provenance: str
    new_provenance: str


@dataclass(frozen=True)
class NodeChange:
    """Graph nodes with the same id pattern and the same change, e.g. every layer's input norm."""

    pattern: str  # id with layer/expert indices replaced by *
    change: str  # "added" | "removed" | "changed"
    detail: str
    node_ids: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.node_ids)


@dataclass(frozen=True)
class EdgeChange:
    """Rewiring between nodes present in both graphs, grouped like `NodeChange`."""

    source: str
    target: str
    kind: str
    change: str  # "added" | "removed"
    count: int


@dataclass(frozen=True)
class CostDelta:
    name: str
    old: int
    new: int
    unit: str = ""

    @property
    def delta(self) -> int:
        return self.new - self.old

    @property
    def percent(self) -> float | None:
        return 100.0 * self.delta / self.old if self.old else None


@dataclass(frozen=True)
class Side:
    """One of the two specs being compared."""

    path: str
    name: str
    variant: str | None
    ablation: dict[str, str] | None


@dataclass
class SpecDiff:
    a: Side
    b: Side
    fields: list[FieldChange]
    resolved: list[ResolvedChange]
    nodes: list[NodeChange]
    edges: list[EdgeChange]
    costs: list[CostDelta]
    notes: list[str] = field(default_factory=list)
    graph_a: nx.DiGraph | None = field(default=None, repr=False)
    graph_b: nx.DiGraph | None = field(default=None, repr=False)

    @property
    def identical(self) -> bool:
        return not (any(f.value_changed for f in self.fields) or any(r.old != r.new for r in self.resolved) or self.nodes or self.edges or any(c.delta for c in self.costs)
                    or self.a.ablation != self.b.ablation or self.a.variant != self.b.variant)

    def changed_node_ids(self) -> set[str]:
        """Ids of nodes of the new graph that are added or changed."""
        return {n for c in self.nodes if c.change != "removed" for n in c.node_ids}

    def removed_lines(self) -> list[str]:
        return [f"{c.pattern} ({c.count} node{'s' if c.count != 1 else ''}): {c.detail}" for c in self.nodes if c.change == "removed"]


# ----- (a) spec fields -----

def _jsonable(value: Any) -> Any:
    return to_jsonable_python(value, by_alias=True)


def _compare_fields(a: Any, b: Any, path: str, set_a: bool, set_b: bool, out: list[FieldChange]) -> None:
    """Walk two spec values side by side; a leaf differs in value or in being set explicitly."""
    if isinstance(a, BaseModel) and type(a) is type(b):
        for name, info in type(a).model_fields.items():
            key = info.alias or name
            _compare_fields(getattr(a, name), getattr(b, name), f"{path}/{pointer(key)[1:]}",
                            set_a and name in a.model_fields_set, set_b and name in b.model_fields_set, out)
        return
    if (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
            and any(isinstance(x, BaseModel) for x in a + b)):
        for i, (x, y) in enumerate(zip(a, b)):
            _compare_fields(x, y, f"{path}/{i}", set_a, set_b, out)
        return
    old, new = _jsonable(a), _jsonable(b)
    if path in _SKIP_FIELDS or (old == new and set_a == set_b):
        return
    out.append(FieldChange(path, old, new, "spec" if set_a else "default", "spec" if set_b else "default"))


def field_changes(a: Spec, b: Spec) -> list[FieldChange]:
    out: list[FieldChange] = []
    _compare_fields(a, b, "", True, True, out)
    return out


# ----- (a') resolved values -----

def _resolved_value(resolved: ResolvedSpec, key: str) -> Any:
    if key == "model.mlp":
        return "moe" if resolved.model.moe is not None else "dense"
    obj: Any = resolved
    for part in key.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    if is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(getattr(obj, "kind", None) or asdict(obj))
    return _jsonable(obj)


def resolved_changes(a: ResolvedSpec, b: ResolvedSpec, fields: list[FieldChange]) -> list[ResolvedChange]:
    """Resolved values that differ, leaving out plain repeats of a field change (both sides set by the same spec path)."""
    reported = {f.path for f in fields}
    out = []
    for key in dict.fromkeys([*a.provenance, *b.provenance]):
        if key == "variant":
            continue  # shown in the header, with how each side's variant was chosen
        pa, pb = a.provenance.get(key, ABSENT), b.provenance.get(key, ABSENT)
        va = _resolved_value(a, key) if pa != ABSENT else None
        vb = _resolved_value(b, key) if pb != ABSENT else None
        if va == vb and pa == pb:
            continue
        if pa == pb and pa.startswith("spec:") and pa[len("spec:"):] in reported:
            continue
        out.append(ResolvedChange(key, va, vb, pa, pb))
    return out


# ----- (b) graph -----

def pattern(node_id: str) -> str:
    """A node id with its layer and expert indices replaced by `*`."""
    return _EXPERT.sub(lambda m: f".{m.group(1)}.*.", _LAYER.sub(".layers.*.", node_id))


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def _node_detail(a: OpNode, b: OpNode, trains_a: bool, trains_b: bool) -> str:
    parts = []
    if a.op != b.op:
        parts.append(f"{a.op} -> {b.op}")
    if trains_a != trains_b:
        parts.append(f"trainable {_show(trains_a)} -> {_show(trains_b)}")
    for name in ("out_shape", "in_shapes", "params", "role", "tied_to"):
        old, new = getattr(a, name), getattr(b, name)
        if old != new:
            parts.append(f"{name} {_show(old)} -> {_show(new)}")
    attrs_a, attrs_b = attrs_dict(a.attrs), attrs_dict(b.attrs)
    for key in dict.fromkeys([*attrs_a, *attrs_b]):
        old, new = attrs_a.get(key, ABSENT), attrs_b.get(key, ABSENT)
        if old != new:
            parts.append(f"{key} {_show(old)} -> {_show(new)}")
    return "; ".join(parts)


def _summary(op: OpNode) -> str:
    text = f"{op.op} {op.out_shape if op.out_shape != '()' else 'scalar'}"
    return text + (f", {op.params:,} params" if op.params else "")


def node_changes(ga: nx.DiGraph, gb: nx.DiGraph) -> list[NodeChange]:
    na, nb = {n.id: n for n in nodes(ga)}, {n.id: n for n in nodes(gb)}
    roles_a, roles_b = default_trainable_roles(ga), default_trainable_roles(gb)
    groups: dict[tuple[str, str, str], list[str]] = {}
    for node_id, op in na.items():
        if node_id not in nb:
            groups.setdefault((pattern(node_id), "removed", _summary(op)), []).append(node_id)
    for node_id, op in nb.items():
        if node_id not in na:
            groups.setdefault((pattern(node_id), "added", _summary(op)), []).append(node_id)
        elif detail := _node_detail(na[node_id], op, bool(na[node_id].params) and na[node_id].role in roles_a,
                                    bool(op.params) and op.role in roles_b):
            groups.setdefault((pattern(node_id), "changed", detail), []).append(node_id)
    return [NodeChange(p, change, detail, tuple(ids)) for (p, change, detail), ids in groups.items()]


def edge_changes(ga: nx.DiGraph, gb: nx.DiGraph) -> list[EdgeChange]:
    """Edges added or removed between nodes that exist in both graphs (edges of added or removed
    nodes are implied by the node changes)."""
    common = set(ga.nodes) & set(gb.nodes)
    ea = {(u, v, str(d["kind"])) for u, v, d in ga.edges(data=True) if u in common and v in common}
    eb = {(u, v, str(d["kind"])) for u, v, d in gb.edges(data=True) if u in common and v in common}
    groups: dict[tuple[str, str, str, str], list[tuple[str, str]]] = {}
    for change, edges in (("removed", ea - eb), ("added", eb - ea)):
        for u, v, kind in sorted(edges):
            groups.setdefault((pattern(u), pattern(v), str(kind), change), []).append((u, v))
    # a group of one keeps its concrete ids: only layer 0 has that edge, not "layers.*"
    return [EdgeChange(*(pairs[0] if len(pairs) == 1 else (u, v)), kind, change, len(pairs))
            for (u, v, kind, change), pairs in groups.items()]


# ----- (c) costs -----

def cost_deltas(a: Costs, b: Costs, seq_len_a: int, seq_len_b: int) -> list[CostDelta]:
    at = f"at seq_len {seq_len_a}" if seq_len_a == seq_len_b else f"at seq_len {seq_len_a} / {seq_len_b}"
    return [
        CostDelta("total params", a.total_params, b.total_params),
        CostDelta("trainable params", a.trainable_params, b.trainable_params),
        CostDelta("frozen params", a.frozen_params, b.frozen_params),
        CostDelta("LoRA params", a.lora_params, b.lora_params),
        CostDelta("FLOPs / token", a.flops_per_token, b.flops_per_token, "forward"),
        CostDelta("KV cache / token", a.kv_cache_bytes_per_token, b.kv_cache_bytes_per_token, "bytes"),
        CostDelta("activations", a.activation_bytes, b.activation_bytes, f"bytes {at}"),
    ]


# ----- the whole diff -----

def _side(path: Path, resolved: ResolvedSpec) -> Side:
    spec = resolved.spec
    ablation = spec.ablation.model_dump() if spec is not None and spec.ablation is not None else None
    return Side(str(path), resolved.name, resolved.variant, ablation)


def diff_specs(path_a: str | Path, path_b: str | Path, variant_a: str | None = None, variant_b: str | None = None) -> SpecDiff:
    """Load, resolve and build both specs and compare them; raises SpecError on unusable input."""
    spec_a, spec_b = load_spec(path_a), load_spec(path_b)
    ra, rb = resolve(spec_a, variant_a), resolve(spec_b, variant_b)
    notes = []
    if variant_a is None and variant_b is None:
        for mine, theirs, other_spec, label in ((ra, rb, spec_a, "A"), (rb, ra, spec_b, "B")):
            chosen = theirs.variant
            if (mine.variant is None and chosen is not None and "variant" in theirs.provenance
                    and chosen in other_spec.backbone.variants):
                rebuilt = resolve(other_spec, chosen)
                notes.append(f"{label} is built as its {chosen!r} variant too, to match the other spec's backbone.build_variant "
                             f"(name --variant-a/--variant-b to choose)")
                ra, rb = (rebuilt, rb) if label == "A" else (ra, rebuilt)
                break
    ga, gb = build_graph(ra), build_graph(rb)
    fields = field_changes(spec_a, spec_b)
    return SpecDiff(
        a=_side(Path(path_a), ra), b=_side(Path(path_b), rb), fields=fields, resolved=resolved_changes(ra, rb, fields),
        nodes=node_changes(ga, gb), edges=edge_changes(ga, gb),
        costs=cost_deltas(graph_costs(ga, ra.model), graph_costs(gb, rb.model), ra.model.seq_len, rb.model.seq_len),
        notes=notes, graph_a=ga, graph_b=gb,
    )


def to_json(result: SpecDiff) -> dict[str, Any]:
    """The diff as plain JSON data (graphs left out)."""
    return {
        "identical": result.identical,
        "a": asdict(result.a), "b": asdict(result.b), "notes": result.notes,
        "fields": [{**asdict(f), "value_changed": f.value_changed} for f in result.fields],
        "resolved": [asdict(r) for r in result.resolved],
        "nodes": [{**asdict(n), "node_ids": list(n.node_ids), "count": n.count} for n in result.nodes],
        "edges": [asdict(e) for e in result.edges],
        "costs": [{**asdict(c), "delta": c.delta, "percent": c.percent} for c in result.costs],
    }


# ----- text report -----

def _value(value: Any) -> str:
    """One value for the report: scalars inline, lists and objects as JSON (indented on their
    own lines when long, never a Python repr)."""
    if isinstance(value, (dict, list)):
        compact = json.dumps(value)
        if len(compact) <= 60:
            return compact
        if isinstance(value, list):  # one element per line
            items = ",\n       ".join(json.dumps(item) for item in value)
            return f"\n      [{items}]\n   "
        return "\n      " + json.dumps(value, indent=2).replace("\n", "\n      ") + "\n   "
    return "null" if value is None else repr(value) if isinstance(value, str) else _show(value)


def _field_line(f: FieldChange) -> str:
    line = f"  {f.path}: {_value(f.old)} ({f.old_source}) -> {_value(f.new)} ({f.new_source})"
    if isinstance(f.old, list) and isinstance(f.new, list) and not any(isinstance(x, (dict, list)) for x in f.old + f.new):
        gone = [x for x in f.old if x not in f.new]
        came = [x for x in f.new if x not in f.old]
        line += "  [" + ", ".join([f"-{x!r}" for x in gone] + [f"+{x!r}" for x in came]) + "]" if gone or came else ""
    return line


def _cost_line(c: CostDelta, width: int) -> str:
    change = "unchanged" if not c.delta else f"{c.delta:+,}" + (f" ({c.percent:+.2f}%)" if c.percent is not None else "")
    unit = f"  [{c.unit}]" if c.unit else ""
    return f"  {c.name:<18} {c.old:>{width},} -> {c.new:>{width},}   {change}{unit}"


def format_text(result: SpecDiff) -> str:
    """The human-readable report, section by section."""
    def head(side: Side) -> str:
        return side.path + (f" [{side.variant}]" if side.variant else "")

    out = [f"diff {head(result.a)} -> {head(result.b)}"]
    out += [f"note: {n}" for n in result.notes]
    if result.identical:
        out.append("identical: same fields, same graph, same costs")
        return "\n".join(out) + "\n"
    for side, label in ((result.a, "A"), (result.b, "B")):
        if side.ablation and (label == "B" or side.ablation != result.b.ablation):
            out.append(f"ablation ({label}) {side.ablation['name']}: expected effect: {side.ablation['expected_effect']}")

    changed = [f for f in result.fields if f.value_changed]
    out.append(f"\nspec fields: {len(changed)} changed")
    out += [_field_line(f) for f in changed]
    same = [f for f in result.fields if not f.value_changed]
    if same:
        out.append(f"  same value, only its source differs (spec <-> default): {', '.join(f.path for f in same)}")
    moved = [r for r in result.resolved if r.old != r.new]
    if moved:
        out.append(f"\nresolved values: {len(moved)} changed")
        out += [f"  {r.key}: {_value(r.old)} ({r.old_provenance}) -> {_value(r.new)} ({r.new_provenance})" for r in moved]
    sourced = [r for r in result.resolved if r.old == r.new]
    if sourced:
        out.append(f"  same value, only its provenance differs: {', '.join(r.key for r in sourced)}")

    total = sum(c.count for c in result.nodes)
    out.append(f"\ngraph: {total} node{'s' if total != 1 else ''} changed" if result.nodes or result.edges else "\ngraph: unchanged")
    marks = {"added": "+", "removed": "-", "changed": "~"}
    for c in result.nodes:
        times = f" ({c.count} nodes)" if c.count > 1 else ""
        out.append(f"  {marks[c.change]} {c.pattern if c.count > 1 else c.node_ids[0]}{times}: {c.detail}")
    for e in result.edges:
        times = f" ({e.count} edges)" if e.count > 1 else ""
        out.append(f"  {marks[e.change]} edge {e.source} -> {e.target} [{e.kind}]{times}")

    width = max(len(f"{max(c.old, c.new):,}") for c in result.costs)
    out.append("\ncosts")
    out += [_cost_line(c, width) for c in result.costs]
    return "\n".join(out) + "\n"


__all__ = ["CostDelta", "EdgeChange", "FieldChange", "NodeChange", "ResolvedChange", "Side", "SpecDiff",
           "diff_specs", "format_text", "to_json"]
