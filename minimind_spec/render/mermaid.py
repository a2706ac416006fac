"""Write a `Drawing` as a Mermaid flowchart.

Every label is a quoted string whose `"`, `<`, `>`, `&`, `#` and backtick are written as
Mermaid entity codes (`#quot;`, `#lt;` ...), so parentheses, brackets, colons, commas and
unicode in names or shapes cannot break the syntax (the design card's own graph breaks on
its unquoted parentheses). Node ids are sanitised to `[A-Za-z0-9_]` and kept unique.
"""

from __future__ import annotations

import re

from .layout import Block, Drawing, DrawNode

_ENTITIES = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;", "`": "#96;"}
_ENTITY_RE = re.compile("[" + re.escape("".join(_ENTITIES)) + "]")

# (open, close) around the quoted label, per node shape
_BRACKETS = {
    "box": ("[", "]"), "round": ("(", ")"), "stadium": ("([", "])"), "hexagon": ("{{", "}}"),
    "trapezoid": ("[/", "\\]"), "parallelogram": ("[/", "/]"), "circle": ("((", "))"),
}

_ARROWS = {"data": "-->", "residual": "==>", "adapter": "-.->", "routing": "-.->", "aux": "-.->"}

CLASS_DEFS = {
    "io": "fill:#eef2ff,stroke:#4f46e5,color:#1e1b4b",
    "norm": "fill:#f8fafc,stroke:#64748b",
    "attention": "fill:#e0f2fe,stroke:#0369a1",
    "merge": "fill:#fff7ed,stroke:#c2410c",
    "moe": "fill:#f5f3ff,stroke:#7c3aed",
    "lora": "fill:#ecfdf5,stroke:#059669,color:#064e3b",
    "frozen": "stroke-dasharray:4 3",
    "changed": "fill:#fee2e2,stroke:#dc2626,stroke-width:3px,color:#7f1d1d",
    "removed": "fill:#f3f4f6,stroke:#dc2626,stroke-dasharray:6 3,color:#7f1d1d",
}


def escape(text: str) -> str:
    """Text that is safe inside a double-quoted Mermaid label (newlines become spaces)."""
    return _ENTITY_RE.sub(lambda m: _ENTITIES[m.group(0)], " ".join(text.splitlines()))


def label(lines: list[str]) -> str:
    """A quoted Mermaid label, one `<br/>` per line break."""
    return '"' + "<br/>".join(escape(line) for line in lines) + '"'


class _Ids:
    """Graph ids -> Mermaid ids: only [A-Za-z0-9_], never a keyword, unique."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}
        self.used: set[str] = set()

    def __call__(self, key: str) -> str:
        if key not in self.ids:
            base = "n_" + re.sub(r"[^A-Za-z0-9_]", "_", key)
            candidate, i = base, 2
            while candidate in self.used:
                candidate, i = f"{base}_{i}", i + 1
            self.used.add(candidate)
            self.ids[key] = candidate
        return self.ids[key]


def _node(ids: _Ids, n: DrawNode) -> str:
    opening, closing = _BRACKETS[n.shape]
    return f"{ids(n.key)}{opening}{label(n.lines)}{closing}"


def _block(ids: _Ids, block: Block, out: list[str], depth: int) -> None:
    pad = "  " * depth
    out.append(f"{pad}subgraph {ids('block:' + block.key)}[{label([block.title])}]")
    for n in block.nodes:
        out.append(f"{pad}  {_node(ids, n)}")
    for child in block.blocks:
        _block(ids, child, out, depth + 1)
    out.append(f"{pad}end")


def to_mermaid(drawing: Drawing, highlight: set[str] | None = None, removed: list[str] | None = None) -> str:
    """Mermaid flowchart text. `highlight`: drawn node keys to mark as changed; `removed`:
    lines describing nodes that exist only in the other graph (drawn in their own block)."""
    ids = _Ids()
    out = ["flowchart TD"]
    for n in drawing.root.nodes:
        out.append(f"  {_node(ids, n)}")
    for block in drawing.root.blocks:
        _block(ids, block, out, 1)
    if removed:
        out.append(f"  subgraph {ids('block:removed')}[{label(['removed (only in the old spec)'])}]")
        for i, text in enumerate(removed):
            out.append(f"    {ids(f'removed:{i}')}[{label([text])}]")
        out.append("  end")
    for e in drawing.edges:
        arrow = _ARROWS.get(e.kind, "-->")
        text = f'|"{escape(e.label)}"|' if e.label else ""
        out.append(f"  {ids(e.src)} {arrow}{text} {ids(e.dst)}")

    classes: dict[str, list[str]] = {}
    for n in drawing.all_nodes():
        for cls in n.classes:
            classes.setdefault(cls, []).append(ids(n.key))
        if highlight and n.key in highlight:
            classes.setdefault("changed", []).append(ids(n.key))
    if removed:
        classes["removed"] = [ids(f"removed:{i}") for i in range(len(removed))]
    for cls, style in CLASS_DEFS.items():
        if cls in classes:
            out.append(f"  classDef {cls} {style}")
    for cls, members in sorted(classes.items(), key=lambda item: item[0] in ("changed", "removed")):
        out.append(f"  class {','.join(members)} {cls}")
    return "\n".join(out) + "\n"
