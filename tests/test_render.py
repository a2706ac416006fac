"""Diagrams: valid Mermaid (checked by the real parser) and DOT, collapsed and expanded views."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from minimind_spec.cli import app
from minimind_spec.graph import build_graph, node, nodes
from minimind_spec.loader import load_spec
from minimind_spec.render import escape, render
from minimind_spec.render.html import to_html
from minimind_spec.resolve import resolve

from .conftest import CARD, ROOT, SPEC, needs_card
from .mermaid_parser import needs_dot, needs_mermaid, parse_mermaid

SHIPPED = sorted(p for p in (ROOT / "spec").glob("*.json") if not p.name.endswith(".schema.json")) + \
    sorted((ROOT / "spec" / "ablations").glob("*.json"))
NODE_LINE = re.compile(r"^\s*(\w+)(\(\[|\[/|\(\(|\{\{|\[|\()\"")  # a node declaration: id, then its opening bracket
GRAMMAR = re.compile(
    r"\w+(\(\[\]\)|\[/\/\]|\[/\\\]|\(\(\)\)|\{\{\}\}|\[\]|\(\))"  # node: id and empty brackets
    r"|subgraph \w+\[\]|end"  # block
    r"|\w+ (-->|==>|-\.->)(\|\|)? \w+"  # edge, with or without a label
    r"|classDef \w+ [\w:#,.\- ]+|class [\w,]+ \w+")
runner = CliRunner()


def graph_of(path: Path, variant: str | None = None):
    return build_graph(resolve(load_spec(path), variant))


def builds() -> list[tuple[Path, str | None]]:
    """Every shipped spec with each variant it offers (None: its default build)."""
    out = []
    for path in SHIPPED:
        spec = load_spec(path)
        out += [(path, None)] + [(path, v) for v in spec.backbone.variants]
    return out


def declared_ids(text: str) -> list[str]:
    return [m.group(1) for line in text.splitlines() if (m := NODE_LINE.match(line)) and not line.strip().startswith("subgraph")]


def test_shipped_specs_cover_the_card_and_its_ablations() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in SHIPPED}
    assert "spec/minimind.json" in names
    assert len([n for n in names if n.startswith("spec/ablations/")]) == 6


@needs_mermaid
def test_every_shipped_spec_and_variant_passes_the_mermaid_parser() -> None:
    texts: dict[str, str] = {}  # text -> the first build that produced it (training-only ablations repeat the base)
    for path, variant in builds():
        graph = graph_of(path, variant)
        for expand in (False, True):
            texts.setdefault(render(graph, "mermaid", expand), f"{path.name}:{variant}:{'expanded' if expand else 'collapsed'}")
    assert len(texts) >= 2 * len(SHIPPED)
    results = parse_mermaid({name: text for text, name in texts.items()})
    failures = {name: r["error"] for name, r in results.items() if not r["ok"]}
    assert not failures
    assert all(r["type"] == "flowchart-v2" for r in results.values())


@needs_mermaid
@needs_card
def test_the_parser_rejects_the_cards_own_graph() -> None:
    """The check has teeth: the card's section B (unquoted parentheses in labels) is not valid Mermaid."""
    card = CARD.read_text(encoding="utf-8")
    block = re.search(r"```mermaid\n(.*?)```", card, re.DOTALL)
    assert block is not None
    results = parse_mermaid({"card": block.group(1), "ours": render(graph_of(SPEC))})
    assert not results["card"]["ok"] and "Parse error" in results["card"]["error"]
    assert results["ours"]["ok"]


def test_escape_writes_entity_codes() -> None:
    assert escape('a "b" <c> & #d `e`') == "a #quot;b#quot; #lt;c#gt; #amp; #35;d #96;e#96;"
    assert escape("(B, T): [x]\nβ") == "(B, T): [x] β"  # quoted labels keep these; newlines become spaces


@needs_mermaid
def test_hostile_names_stay_inside_their_quotes(write_spec) -> None:
    name = 'Mini "Mind" <v2> (β): [x], a & b #1 `tick` 模型 end'
    graph = build_graph(resolve(load_spec(write_spec(model_name=name)), "MoE"))
    texts = {f"{fmt}:{expand}": render(graph, "mermaid", expand) for fmt in ("mermaid",) for expand in (False, True)}
    for text in texts.values():
        assert "Mini #quot;Mind#quot; #lt;v2#gt; (β): [x], a #amp; b #35;1 #96;tick#96; 模型 end" in text
        for line in text.splitlines()[1:]:
            # with the quoted labels removed, every line is bare syntax: a node, a block, an edge or a class
            bare = re.sub(r'"[^"]*"', "", line).strip()
            assert GRAMMAR.fullmatch(bare), line
    assert all(r["ok"] for r in parse_mermaid(texts).values())


def test_node_ids_are_sanitised_and_unique() -> None:
    text = render(graph_of(SPEC, "MoE"), "mermaid", expand=True)
    ids = declared_ids(text)
    assert ids and all(re.fullmatch(r"n_[A-Za-z0-9_]+", i) for i in ids)
    assert len(ids) == len(set(ids))


def test_expanded_view_draws_every_node() -> None:
    for variant in (None, "MoE"):
        graph = graph_of(SPEC, variant)
        assert len(declared_ids(render(graph, "mermaid", expand=True))) == graph.number_of_nodes()


def test_collapsed_view_draws_one_layer_for_eight_identical_ones() -> None:
    graph = graph_of(SPEC)
    n_layers = resolve(load_spec(SPEC)).model.n_layers
    per_layer = sum(1 for op in nodes(graph) if op.layer == 0)
    text = render(graph)
    assert len(declared_ids(text)) == graph.number_of_nodes() - (n_layers - 1) * per_layer
    assert text.count("(x8)") == 1 and "model.layers.0-7 (x8)" in text
    # merge points and the LoRA adapters of all seven target projections stay visible
    assert text.count("⊕ attn_residual") == 1 and text.count("⊕ mlp_residual") == 1
    assert text.count("LoRA r=8") == 7
    assert len(re.findall(r"_lora -\.-> n_model_layers_0_(self_attn|mlp)_\w+_proj\b", text)) == 7


def test_collapsed_moe_shows_router_experts_block_and_aux_loss() -> None:
    text = render(graph_of(SPEC, "MoE"))
    assert "experts.0-7 (x8)" in text and "model.layers.0-7 (x8)" in text
    assert re.search(r'n_model_layers_0_mlp_gate\[/"mlp\.gate<br/>router: top-2 of 8 experts, aux loss', text)
    assert "n_model_layers_0_mlp_gate -.->|\"aux\"| n_aux_loss" in text
    assert "n_model_layers_0_mlp_gate -.->|\"routing weights\"| n_model_layers_0_mlp_combine" in text
    assert text.count("gate_proj<br/>") == 1  # one expert drawn for eight


def test_layers_that_differ_are_not_merged() -> None:
    graph = graph_of(SPEC)
    target = "model.layers.3.input_layernorm"
    op = node(graph, target)
    graph.nodes[target]["node"] = dataclasses.replace(op, attrs=dataclasses.replace(op.attrs, eps=1e-3))
    text = render(graph)
    assert "model.layers.0-2 (x3)" in text and "model.layers.4-7 (x4)" in text
    assert re.search(r'"model\.layers\.3 · [\d,]+ params per layer"', text)


def test_96_layers_render_as_compactly_as_2(write_spec) -> None:
    small = render(build_graph(resolve(load_spec(write_spec(name="a.json")))))
    deep_path = write_spec(name="b.json", hyperparams={"d_model": 64, "n_layers": 96, "n_heads": 4, "mlp_ratio": 3.0,
                                                        "seq_len": 32, "vocab": 128})
    deep = render(build_graph(resolve(load_spec(deep_path))))
    assert "model.layers.0-95 (x96)" in deep
    assert len(declared_ids(deep)) == len(declared_ids(small))
    assert len(deep.splitlines()) == len(small.splitlines())


def test_markdown_wraps_the_mermaid_text() -> None:
    graph = graph_of(SPEC)
    assert render(graph, "md") == f"```mermaid\n{render(graph)}```\n"


def test_html_inlines_mermaid_and_shows_the_source(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "mermaid.min.js"
    fake.write_text('window.mermaid = {}; var s = "</script>";', encoding="utf-8")
    page = to_html('flowchart TD\n  a["x #lt;y"] --> b', "T <1>", fake)
    assert 'var s = "<\\/script>"' in page and "<script src=" not in page
    assert "a[&quot;x #lt;y&quot;] --&gt; b" in page  # HTML-escaped, mermaid reads it back as text
    assert "<title>T &lt;1&gt;</title>" in page
    monkeypatch.setenv("MINIMIND_MERMAID_JS", str(tmp_path / "none.js"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("minimind_spec.render.html.find_mermaid_js", lambda: None)
    offline = to_html("flowchart TD\n  a", "t")
    assert "<script src=" not in offline and "npm ci" in offline  # no network: source shown, how to get the drawing


@needs_dot
def test_dot_output_is_accepted_by_graphviz(write_spec) -> None:
    """Every build collapsed; expanded (slow to lay out) for the card's spec and a hostile name."""
    hostile = write_spec(model_name='M "q" \\ <x> 模型')
    texts = {render(graph_of(path, variant), "dot") for path, variant in [*builds(), (hostile, "MoE")]}
    texts |= {render(graph_of(path, variant), "dot", expand=True) for path, variant in builds() if path == SPEC}
    texts.add(render(graph_of(hostile), "dot", expand=True))
    for text in texts:
        proc = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr


def test_render_cli_writes_file_and_rejects_bad_input(tmp_path) -> None:
    out = tmp_path / "g.md"
    result = runner.invoke(app, ["render", str(SPEC), "--format", "md", "--variant", "MoE", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").startswith("```mermaid\nflowchart TD\n")
    assert runner.invoke(app, ["render", str(SPEC), "--format", "png"]).exit_code == 2
    missing = runner.invoke(app, ["render", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "file not found" in missing.output
    bad_variant = runner.invoke(app, ["render", str(SPEC), "--variant", "Sparse"])
    assert bad_variant.exit_code == 2

