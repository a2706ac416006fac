"""`render` and `diff`: diagrams of the module graph, and semantic diffs of two specs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ..diff import diff_specs, format_text, to_json
from ..files import write_text_atomic
from ..graph import build_graph
from ..loader import load_spec
from ..render import render
from ..resolve import resolve
from .app import app, console, err_console, guarded, print_json, spec_errors
from .options import AsJson, SpecPath, Variant

MERMAID_MAX_EDGES = 500  # mermaid's default `maxEdges`; GitHub renders with the defaults
LARGE_DRAWING_BYTES = 5 * 2**20  # above this a drawing is said to be too large, with its size


@app.command("render")
@guarded
def render_command(
    spec: SpecPath,
    fmt: Annotated[Literal["mermaid", "md", "html", "dot"], typer.Option(
        "--format", "-f", help="mermaid (flowchart text), md (a ```mermaid block GitHub renders), html (a page that renders "
        "it offline, with the source), dot (Graphviz).")] = "mermaid",
    expand: Annotated[bool, typer.Option(
        "--expand", help="Draw every node; by default identical repeated layers (and MoE experts) are drawn once, marked xN.")] = False,
    variant: Variant = None,
    output: Annotated[Path | None, typer.Option("--out", "--output", "-o", help="Write here instead of stdout.", show_default=False)] = None,
) -> None:
    """Draw the module graph (the one that compiles) with shapes and parameter counts."""
    graph = build_graph(resolve(load_spec(spec), variant))
    text = render(graph, fmt, expand)
    if fmt in ("mermaid", "md") and text.count("-->") + text.count("==>") + text.count("-.->") > MERMAID_MAX_EDGES:
        err_console.print(f"[yellow]warning[/yellow] more than {MERMAID_MAX_EDGES} edges: mermaid's default limit (GitHub's too) "
                          "refuses this diagram; drop --expand, or use --format html, which raises the limit", markup=True)
    if fmt == "html":
        from ..render.html import find_mermaid_js

        if find_mermaid_js() is None:
            err_console.print("[yellow]warning[/yellow] mermaid.js was not found, so the page shows the diagram's source "
                              "only: run `npm ci` in the repository (or set MINIMIND_MERMAID_JS=path/to/mermaid.min.js) "
                              "and render again", markup=True)
    drawing = len(text) if fmt != "html" else len(render(graph, "mermaid", expand))  # the page's inlined mermaid.js aside
    if drawing > LARGE_DRAWING_BYTES:
        err_console.print(f"[yellow]warning[/yellow] this drawing is {drawing / 2**20:,.1f} MiB ({graph.number_of_nodes():,} "
                          "nodes): too large for most viewers" + ("; drop --expand to draw repeated layers once" if expand else ""),
                          markup=True)
    if output is None:
        console.file.write(text)
    else:
        write_text_atomic(output, text)
        err_console.print(f"wrote {output} ({fmt}, {'expanded' if expand else 'collapsed'})")


@app.command("diff")
def diff_command(
    spec_a: Annotated[Path, typer.Argument(help="The old spec (e.g. spec/minimind.json).", show_default=False)],
    spec_b: Annotated[Path, typer.Argument(help="The new spec (e.g. spec/ablations/lora_rank4.json).", show_default=False)],
    json_output: AsJson = False,
    fmt: Annotated[Literal["text", "mermaid"], typer.Option(
        "--format", "-f", help="text (the report), or mermaid: the new graph with changed nodes highlighted.")] = "text",
    variant_a: Annotated[str | None, typer.Option("--variant-a", help="Variant of the old spec to build, e.g. MoE.", show_default=False)] = None,
    variant_b: Annotated[str | None, typer.Option("--variant-b", help="Variant of the new spec to build, e.g. MoE.", show_default=False)] = None,
) -> None:
    """Semantic diff of two specs (ablations): what changes in the model and what it costs.

    Reports changed fields (with provenance), graph changes grouped across layers, cost deltas
    and the ablation's expected effect. Exit 0 identical, 1 different, 2 unusable input.
    Example: `minimind-spec diff spec/minimind.json spec/ablations/lora_rank4.json`.

    When B builds a variant through backbone.build_variant (the MoE ablation), A is built as that
    variant too unless --variant-a/--variant-b say otherwise."""
    with spec_errors():
        result = diff_specs(spec_a, spec_b, variant_a, variant_b)
    if json_output:
        print_json(to_json(result))
    elif fmt == "mermaid":
        console.file.write(render(result.graph_b, "mermaid", highlight=result.changed_node_ids(),
                                  removed=result.removed_lines()))
    else:
        console.file.write(format_text(result))
    raise typer.Exit(0 if result.identical else 1)
