"""Commands on one spec: `validate`, `explain`, `schema` and `build`."""

from __future__ import annotations

import contextlib

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from ..errors import Problem, SpecError
from ..files import write_text_atomic
from .app import app, console, guarded, print_json, print_problems
from .options import AsJson, SpecPath, Variant

PACKAGE_SPEC_DIR = Path(__file__).resolve().parents[2] / "spec"  # the shipped specs, beside the package in a checkout


def default_schema_path() -> Path:
    """`spec/minimind.schema.json` beside the package's shipped spec (never relative to the working directory)."""
    if not (PACKAGE_SPEC_DIR / "minimind.json").is_file():
        raise SpecError(Problem("", f"no shipped spec directory beside the package ({PACKAGE_SPEC_DIR})",
                                "pass -o FILE to say where the schema goes"))
    return PACKAGE_SPEC_DIR / "minimind.schema.json"


@app.command()
@guarded
def validate(path: SpecPath, as_json: AsJson = False) -> None:
    """Check a spec: JSON syntax, schema, and cross-field rules. Every problem is listed with its JSON path.

    Exit code 0 when the spec is usable (warnings may still be printed), 2 when it is not.
    """
    from ..loader import load_spec

    try:
        spec = load_spec(path)
    except SpecError as error:
        if as_json:
            print_json({"valid": False, "source": str(path), "problems": [p.as_dict() for p in error.problems]})
            raise typer.Exit(2) from None
        raise
    warnings = spec.origin.warnings if spec.origin is not None else ()
    if as_json:
        print_json({"valid": True, "source": str(path), "problems": [p.as_dict() for p in warnings]})
        return
    print_problems(warnings)
    console.print(f"[green]valid[/green] {path}: {spec.model_name}, {len(warnings)} warning{'s' if len(warnings) != 1 else ''}")


@app.command()
@guarded
def explain(path: SpecPath, variant: Variant = None, as_json: AsJson = False) -> None:
    """Print every resolved value and where it came from: the spec (with its JSON path), a documented default, or a derivation."""
    from ..explain import explain_rows, resolved_to_json
    from ..loader import load_spec
    from ..resolve import resolve

    resolved = resolve(load_spec(path), variant)
    if as_json:
        print_json(resolved_to_json(resolved))
        return
    rows = explain_rows(resolved)
    widest = max(len(row.field) for row in rows)
    if console.width < widest + 50:  # too narrow for three columns: one value per line, nothing cut
        console.print(f"[bold]{resolved.name} ({resolved.variant or 'base'}) resolved[/bold]: field = value  (provenance)")
        for row in rows:
            console.print(f"{row.field} = {json.dumps(row.value)}  [dim]({escape(row.provenance)})[/dim]", soft_wrap=False)
        return
    table = Table(title=f"{resolved.name} ({resolved.variant or 'base'}) resolved", box=box.SIMPLE_HEAD)
    table.add_column("field", no_wrap=True, min_width=max(len(row.field) for row in rows))  # names are never cut
    table.add_column("value", overflow="fold", max_width=40)  # values and provenance wrap
    table.add_column("provenance", overflow="fold", min_width=12)
    for row in rows:
        style = "cyan" if row.provenance.startswith("spec:") else ("magenta" if row.provenance.startswith(("derived", "variant")) else "dim")
        table.add_row(row.field, json.dumps(row.value), f"[{style}]{row.provenance}[/{style}]")
    console.print(table, soft_wrap=False)


@app.command()
@guarded
def schema(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write the JSON Schema (default: "
                                             "spec/minimind.schema.json beside the package's shipped spec).",
                                             show_default=False)] = None,
    check: Annotated[bool, typer.Option("--check", help="Do not write; exit 1 if the file differs from the models.")] = False,
) -> None:
    """Write the JSON Schema generated from the spec models (for editors: add "$schema" to a spec)."""
    from ..validate import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    out = out if out is not None else default_schema_path()
    if check:
        current = out.read_text(encoding="utf-8") if out.is_file() else None
        if current != text:
            console.print(f"[red]stale[/red] {out}: run `minimind-spec schema`")
            raise typer.Exit(1)
        console.print(f"[green]up to date[/green] {out}")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    console.print(f"wrote {out}")


@app.command()
@guarded
def build(
    path: SpecPath,
    variant: Variant = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Directory for resolved.json, graph.json (node-link), model.safetensors and config.json.")] = None,
    device: Annotated[Literal["cpu", "cuda", "mps", "meta"], typer.Option("--device", help="Device for the weights written with --out; 'meta' builds without allocating (no weights file).")] = "cpu",
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of the initial weights written with --out.")] = 0,
    strict: Annotated[bool, typer.Option("--strict", help="Treat declared-vs-compiled mismatches as errors (exit 2).")] = False,
    weights: Annotated[Path | None, typer.Option("--weights", help="Trained weights for this spec: a run directory (its newest "
                                                 "finished stage), a stage directory, a checkpoint or a model directory. "
                                                 "Checked to fit; --out then writes them (and the run's tokenizer).",
                                                 show_default=False)] = None,
    as_json: AsJson = False,
) -> None:
    """Build the module graph and report its true sizes, and every declared number it contradicts.

    Prints parameters per op type and in total, trainable parameters with LoRA, FLOPs per token,
    KV-cache bytes per token and activation memory, then each declared-vs-compiled mismatch with
    both numbers and the reason. The model is always built as the hyperparameters say.

    Examples: `minimind-spec build spec/minimind.json`, `... --variant MoE`,
    `... --out build/ --device meta`, `... --strict` (mismatches exit 2),
    `... --weights runs/tiny --out model/` (a trained model, HF-loadable for dense specs).
    """
    from ..pipeline import build as run_build
    from .reports import build_report_json, print_build_report, write_build_outputs

    result = run_build(path, variant, strict=strict)
    trained = None
    with contextlib.ExitStack() as scope:
        if weights is not None:
            from ..engine.export import check_weights_fit
            from ..engine.minimind_import import imported_model
            from ..model_files import find_model, is_foreign_checkpoint

            if is_foreign_checkpoint(weights):  # a MiniMind .pth: imported through the exact fit check
                trained = scope.enter_context(imported_model(weights, result.resolved))
            else:
                trained = find_model(weights)
                check_weights_fit(result.resolved, trained.config)
        written = write_build_outputs(result, out, device, seed, trained) if out is not None else []
    if as_json:
        report = build_report_json(result)
        report["written"] = [str(p) for p in written]
        report["weights"] = str(weights) if trained is not None else None
        print_json(report)
        return
    print_build_report(result, str(path))
    if trained is not None:
        console.print(f"weights: {weights} (they fit this spec)")
    for p in written:
        console.print(f"wrote {p}")
