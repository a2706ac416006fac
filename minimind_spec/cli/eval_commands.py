"""`minimind-spec eval`: score a trained model on a JSONL file (perplexity, multiple choice or exact
match, as lm-evaluation-harness defines them; see engine/evaluation.py) and print a table or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from .app import app, console, guarded, print_json
from .model_commands import ForSpec, model_source
from .options import AsJson, Variant


@app.command("eval")
@guarded
def eval_command(
    model: Annotated[Path, typer.Argument(help="A run directory (its latest stage), a stage directory, a checkpoint or a "
                                          "model directory; a MiniMind .pth with --spec.", show_default=False)],
    data: Annotated[Path, typer.Option("--data", help="JSONL file of one record kind: {\"text\"} (perplexity), "
                                       "{\"question\", \"choices\", \"answer\"} (multiple choice) or {\"conversations\"} "
                                       "ending with the reference answer (exact match).", show_default=False)],
    kind: Annotated[Literal["text", "choice", "conversation"] | None, typer.Option(
        "--kind", help="The record kind, when the first record's keys should not decide it.", show_default=False)] = None,
    as_json: AsJson = False,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="Tokenizer directory, if the run has none beside "
                                                   "the model.", show_default=False)] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", min=2, help="The window in tokens (default: the "
                                                   "model's max_position_embeddings).", show_default=False)] = None,
    stride: Annotated[int | None, typer.Option("--stride", min=1, help="Text longer than the window: new tokens scored "
                                               "per window after the first (default: half the window; the window's own "
                                               "length gives lm-eval's disjoint windows).", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sequences per forward pass.")] = 8,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1, help="Conversations: tokens to "
                                                       "generate at most (default: the reference's length + 32).",
                                                       show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or mps.")] = "cpu",
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar (it is shown on stderr when that "
                                              "is a terminal).")] = False,
    spec: ForSpec = None,
    variant: Variant = None,
) -> None:
    """Evaluate a trained model on a JSONL file, with lm-evaluation-harness's definitions.

    **text** records: token perplexity, bits per byte, byte and word perplexity over the whole
    file (each text after a BOS, every token scored once; texts longer than the window in
    overlapping windows, `--stride` new tokens each). **choice** records: `acc` and `acc_norm`
    (the summed log-likelihood of " " + choice after the question; normalised by the choice's
    characters). **conversation** records: greedy answers to all but the last turn, `exact_match`
    against it (the model's reasoning before `</think>` is not compared). `--json` adds each
    record's scores or answer.

    Examples: `minimind-spec eval runs/tiny --data valid.jsonl`,
    `minimind-spec eval runs/tiny --data quiz.jsonl --json`,
    `minimind-spec eval out/full_sft_768.pth --spec spec/minimind3.json --tokenizer minimind/model --data test.jsonl`.
    """
    from ..engine.evaluation import EvalSettings, evaluate

    settings = EvalSettings(max_length=max_length, stride=stride, batch_size=batch_size, max_new_tokens=max_new_tokens,
                            device=device, progress=not no_progress)
    with model_source(model, spec, variant, tokenizer) as files:
        report = evaluate(files, data, tokenizer_dir=tokenizer, kind=kind, settings=settings)
    if as_json:
        print_json({"model": str(model), **report.as_dict()})
        return
    table = Table(title=f"{model} on {data} ({report.kind} records)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("n", justify="right")
    for metric in report.metrics:
        table.add_row(metric.name, f"{metric.value:.4f}", f"{metric.n:,}")
    console.print(table)
    if report.kind == "text":
        totals = report.totals
        console.print(f"{totals['tokens']:,} tokens, {totals['bytes']:,} bytes, {totals['words']:,} words; "
                      f"window {totals['window']}, stride {totals['stride']}")
