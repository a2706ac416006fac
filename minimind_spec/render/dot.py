"""Write a `Drawing` as Graphviz DOT: blocks become clusters, node shapes and edge styles
follow the Mermaid view. Labels are double-quoted DOT strings with `\\` and `"` escaped and
one `\\n` per line, so any text (unicode included) is safe."""

from __future__ import annotations

from .layout import Block, Drawing, DrawNode

_SHAPES = {
    "box": "box", "round": "box", "stadium": "box", "hexagon": "hexagon", "trapezoid": "trapezium",
    "parallelogram": "parallelogram", "circle": "ellipse",
}
_STYLE = {"round": "rounded", "stadium": "rounded"}

_FILLS = {
    "io": "#eef2ff", "norm": "#f8fafc", "attention": "#e0f2fe", "merge": "#fff7ed", "moe": "#f5f3ff",
    "lora": "#ecfdf5", "changed": "#fee2e2", "removed": "#f3f4f6",
}

_EDGES = {
    "data": "", "residual": "penwidth=2", "adapter": 'style=dashed, color="#059669"',
    "routing": 'style=dashed, color="#7c3aed"', "aux": 'style=dotted, color="#7c3aed"',
}


def quote(text: str) -> str:
    """A double-quoted DOT string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(lines: list[str]) -> str:
    return quote("\n".join(" ".join(line.splitlines()) for line in lines))


def _node(n: DrawNode, ids: dict[str, str], highlight: set[str]) -> str:
    classes = list(n.classes) + (["changed"] if n.key in highlight else [])
    fill = next((_FILLS[c] for c in reversed(classes) if c in _FILLS), "#ffffff")
    styles = ["filled"] + ([_STYLE[n.shape]] if n.shape in _STYLE else []) + (["dashed"] if "frozen" in classes else [])
    extra = ', color="#dc2626", penwidth=3' if "changed" in classes else ""
    return (f"{ids[n.key]} [label={_label(n.lines)}, shape={_SHAPES[n.shape]}, style={quote(','.join(styles))}, "
            f"fillcolor={quote(fill)}{extra}];")


def _block(block: Block, ids: dict[str, str], highlight: set[str], out: list[str], depth: int) -> None:
    pad = "  " * depth
    out.append(f"{pad}subgraph cluster_{len(out)} {{")
    out.append(f'{pad}  label={quote(block.title)}; style="rounded,dashed"; color="#94a3b8";')
    for n in block.nodes:
        out.append(f"{pad}  {_node(n, ids, highlight)}")
    for child in block.blocks:
        _block(child, ids, highlight, out, depth + 1)
    out.append(f"{pad}}}")


def to_dot(drawing: Drawing, highlight: set[str] | None = None, removed: list[str] | None = None) -> str:
    """Graphviz DOT text of the drawing (same arguments as `to_mermaid`)."""
    highlight = highlight or set()
    ids = {n.key: f"n{i}" for i, n in enumerate(drawing.all_nodes())}
    out = [
        f"digraph {quote(drawing.title)} {{",
        '  rankdir=TB; newrank=true; fontname="Helvetica";',
        '  node [fontname="Helvetica", fontsize=10]; edge [fontname="Helvetica", fontsize=9];',
    ]
    for n in drawing.root.nodes:
        out.append(f"  {_node(n, ids, highlight)}")
    for block in drawing.root.blocks:
        _block(block, ids, highlight, out, 1)
    if removed:
        out.append("  subgraph cluster_removed {")
        out.append(f'    label={quote("removed (only in the old spec)")}; color="#dc2626"; style=dashed;')
        for i, text in enumerate(removed):
            out.append(f'    removed{i} [label={quote(text)}, shape=box, style="filled,dashed", fillcolor="#f3f4f6"];')
        out.append("  }")
    for e in drawing.edges:
        attrs = [a for a in (_EDGES.get(e.kind, ""), f"label={quote(e.label)}" if e.label else "") if a]
        out.append(f"  {ids[e.src]} -> {ids[e.dst]}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    out.append("}")
    return "\n".join(out) + "\n"
