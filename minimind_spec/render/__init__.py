"""Diagrams of the module graph: Mermaid, Markdown, HTML and Graphviz DOT.

Drawn from the same graph that compiles, so the picture cannot drift from the model.
`layout` decides what to draw (collapsing identical repeated layers and experts unless
`expand`); `mermaid` and `dot` write it out; `html` wraps Mermaid in a browser page.
"""

from __future__ import annotations

from typing import Literal

import networkx as nx

from .dot import to_dot
from .html import find_mermaid_js, to_html
from .layout import Drawing, layout
from .mermaid import escape, to_mermaid

Format = Literal["mermaid", "md", "html", "dot"]
FORMATS: tuple[str, ...] = ("mermaid", "md", "html", "dot")


def render(graph: nx.DiGraph, fmt: Format = "mermaid", expand: bool = False,
           highlight: set[str] | None = None, removed: list[str] | None = None) -> str:
    """The diagram of `graph` as text in format `fmt`.

    `highlight` holds graph node ids to mark as changed (a node drawn for several collapsed
    layers is marked when any of them is); `removed` lists lines for nodes that are gone."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    drawing = layout(graph, expand)
    marked = {n.key for n in drawing.all_nodes() if highlight and highlight.intersection(n.members)}
    if fmt == "dot":
        return to_dot(drawing, marked, removed)
    text = to_mermaid(drawing, marked, removed)
    if fmt == "md":
        return f"```mermaid\n{text}```\n"
    if fmt == "html":
        return to_html(text, drawing.title)
    return text


__all__ = ["FORMATS", "Drawing", "Format", "escape", "find_mermaid_js", "layout", "render", "to_dot", "to_html", "to_mermaid"]
