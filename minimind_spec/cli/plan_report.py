"""`train --plan`'s report: each stage as a tree of its decisions with their provenance and warnings,
then a table of estimates; and the end-of-run summary `train` prints."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from ..plan import StagePlan, TrainingPlan
from .app import console, err_console
from .reports import fmt_bytes


def _flops(n: int | None) -> str:
    return "?" if n is None else f"{n:.3g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _rows(plan: StagePlan) -> list[str]:
    """The stage's lines: what it reads, trains, optimises, and costs."""
    prov = {key: escape(value) for key, value in plan.provenance.items()}  # paths and user text may hold [brackets]
    clip = "off" if plan.grad_clip is None else f"{plan.grad_clip:g}"
    layout = {"stream": "consecutive slices of the token stream" + (", documents isolated" if plan.document_mask
                                                                     else ", documents attend across"),
              "packed": "samples packed into rows, each attending to itself only" if plan.pack
              else "one sample per row, padded (--no-pack)", "pairs": "chosen/rejected pairs padded to the batch's longest",
              "groups": "each prompt sampled as a group of completions; batch counts prompts, seq_len bounds prompt + "
                        "completion"}
    lines = [f"objective: {escape(plan.objective.describe())}; the step's loss sum / its {plan.count_unit}",
             f"data: {escape(str(plan.data or '-'))}  [dim]({escape(plan.data_format)}; {layout[plan.rows]})[/dim]",
             f"trains: {', '.join(plan.trainable_roles)}: {plan.trainable_params:,} of {plan.total_params:,} parameters "
             f"({plan.trainable_percent:.2f}%), from {escape(plan.init_from)}  [dim]({prov['trainable_roles']})[/dim]"]
    if plan.active_params < plan.total_params:
        lines.append(f"per token: {plan.active_params:,} active of {plan.total_params:,} parameters "
                     f"({100 * plan.active_params / plan.total_params:.1f}%; MoE routes each token to its top-k experts)")
    lines += [f"[yellow]declared vs compiled: {escape(c)}[/yellow]" for c in plan.declared]
    quant = plan.base_quant
    if quant is not None:
        lines.append(f"base in {quant.scheme.upper()}: {fmt_bytes(quant.bytes)} ({quant.ratio:.2f} x fp32 {fmt_bytes(quant.fp32_bytes)}) for "
                     f"{quant.params:,} weights of {quant.matrices} projections, dequantised on the fly; embeddings, norms and "
                     f"head at full precision  [dim]({prov['base_quant']})[/dim]")
    if plan.frozen_model:
        lines.append(f"frozen: {escape(plan.frozen_model)}")
    lines += [
        f"optimizer: {plan.optimizer}(betas={plan.betas[0]:g}/{plan.betas[1]:g}), lr {plan.lr:g} [dim]({prov['lr']})[/dim], "
        f"weight decay {plan.weight_decay:g} [dim]({prov['weight_decay']})[/dim] on {plan.decay_params:,}, none on "
        f"{plan.no_decay_params:,} (norms, embeddings)",
        f"schedule: {plan.schedule}  [dim](warmup: {prov['warmup']}; min_lr_ratio: {prov['min_lr_ratio']})[/dim]",
        f"batch {plan.batch_size} [dim]({prov['batch_size']})[/dim] x seq_len {plan.seq_len} [dim]({prov['seq_len']})[/dim]; "
        f"micro-batch {plan.micro_batch}, accumulation {plan.grad_accumulation}"
        f"{f', {plan.processes} processes' if plan.processes > 1 else ''} [dim](memory only: the result does not change)[/dim]",
        f"grad clip {clip} [dim]({prov['grad_clip']})[/dim], {plan.precision}, fp32 master weights",
        f"attention: {plan.attention}" + (f" [dim]({escape(plan.attention_note)})[/dim]" if plan.attention_note else ""),
    ]
    length = f"{plan.max_steps} steps" if plan.max_steps is not None else f"{plan.epochs} epoch{'s' if plan.epochs != 1 else ''}"
    memory = plan.memory
    sharded = f" per process (FSDP over {memory.shards})" if memory.shards > 1 else ""
    weights = "weights (NF4 base)" if quant is not None else "fp32 weights"
    lines.append(f"peak memory{sharded} {fmt_bytes(memory.total)} = {fmt_bytes(memory.weights)} {weights} + "
                 f"{fmt_bytes(memory.gradients + memory.optimizer)} grads and optimizer state + {fmt_bytes(memory.activations)} "
                 f"activations of one micro-batch + {fmt_bytes(memory.frozen_models)} frozen models")
    source = prov["max_steps"] if plan.max_steps is not None else prov["epochs"]
    lines.append(f"length: {length} [dim]({source})[/dim]; eval: {escape(plan.evaluation)}")
    lines += [f"[yellow]warning: {escape(w)}[/yellow]" for w in plan.warnings]
    return lines


def stage_tree(index: int, plan: StagePlan) -> Tree:
    status = ("[green]runnable[/green]" if plan.blocked is None
              else f"[yellow]blocked: {escape(plan.blocked)} -> {escape(plan.unblock or '')}[/yellow]")
    node = Tree(f"[bold]{index}. {plan.kind}[/bold]  {status}")
    for line in _rows(plan):
        node.add(line)
    return node


def print_plan(training_plan: TrainingPlan, source: str) -> None:
    title = f"{training_plan.name} ({training_plan.variant or 'base'}) from {source}"
    tree = Tree(f"[bold]Training plan[/bold]: {escape(title)}, {len(training_plan.stages)} stages")
    for i, plan in enumerate(training_plan.stages, 1):
        tree.add(stage_tree(i, plan))
    console.print(tree, soft_wrap=False)  # wrap long lines inside the tree instead of cropping them
    for warning in training_plan.warnings:
        console.print(f"[yellow]warning: {escape(warning)}[/yellow]")
    table = Table(title="Estimates")
    for column in ("stage", "tokens", "train FLOPs", "peak memory", "tok/s", "wall"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for plan in training_plan.stages:
        table.add_row(plan.kind, "?" if plan.tokens is None else f"{plan.tokens:,}", _flops(plan.train_flops),
                      fmt_bytes(plan.memory.total), "?" if plan.tokens_per_s is None else f"{plan.tokens_per_s:,.0f}",
                      _duration(plan.wall_seconds))
    console.print(table)
    if any(p.tokens is None for p in training_plan.stages):
        err_console.print("tokens are '?' where neither --max-steps nor a data file fixes the length")
    sources = sorted({p.throughput_source for p in training_plan.stages if p.throughput_source})
    if sources:
        err_console.print(f"tok/s: {'; '.join(sources)}")
    if any(p.tokens_per_s is None for p in training_plan.stages):
        err_console.print("wall time needs --tokens-per-s N (or --probe, which measures the stages without a frozen model)")


def print_warnings(training_plan: TrainingPlan) -> None:
    """Before a run: each attention fallback once, then each stage's warnings, one line each."""
    for note in dict.fromkeys(p.attention_note for p in training_plan.stages if p.attention_note):
        err_console.print(f"note: {escape(note or '')}; attention uses PyTorch SDPA")
    for warning in training_plan.warnings:
        err_console.print(f"[yellow]warning[/yellow] {escape(warning)}")
    for plan in training_plan.stages:
        for warning in plan.warnings:
            err_console.print(f"[yellow]warning[/yellow] {plan.kind}: {escape(warning)}")


def print_outputs(training_plan: TrainingPlan, out: Path) -> None:
    """After a run: where its loss plots and TensorBoard events are, or why there are none."""
    stages = [out / plan.kind for plan in training_plan.stages]
    plots = [stage / "loss.png" for stage in stages if (stage / "loss.png").is_file()]
    if plots:
        console.print("loss plots: " + ", ".join(str(p) for p in plots), markup=False)
    elif importlib.util.find_spec("matplotlib") is None:
        err_console.print("no loss plot: matplotlib is not installed here (pip install matplotlib; `make demo` installs it)")
    if any((stage / "tensorboard").is_dir() for stage in stages):
        console.print(f"TensorBoard events: {out}/<stage>/tensorboard (tensorboard --logdir {out})", markup=False)
    elif importlib.util.find_spec("tensorboard") is None:
        err_console.print("no TensorBoard events: tensorboard is not installed here (pip install tensorboard)")


def print_results(training_plan: TrainingPlan, results: list[Any], out: Path) -> None:
    """After a run: per stage what trained, how it ended, its loss and newest held-out loss (with its step)."""
    for stage, result in zip(training_plan.stages, results):
        console.print(f"{stage.kind}: trained {', '.join(stage.trainable_roles)}: {stage.trainable_params:,} of "
                      f"{stage.total_params:,} parameters ({stage.trainable_percent:.2f}%)", markup=False)
        for contradiction in stage.declared:
            err_console.print(f"[yellow]declared vs compiled[/yellow]: {escape(contradiction)}")
        ended = ("interrupted, saved" if result.interrupted else
                 f"stopped early by its watch ({result.stopped_by}), saved" if result.stopped_by else "done")
        evaluation = result.evaluation
        held_out = "" if evaluation is None else (
            f", held-out loss {evaluation.loss:.4f}" + ("" if evaluation.step == result.steps else f" (at step {evaluation.step})"))
        loss = "n/a (no step ran: the stage was already done)" if result.last_loss is None else f"{result.last_loss:.4f}"
        skipped = f", {result.skipped_steps} steps skipped (non-finite loss)" if result.skipped_steps else ""
        console.print(f"{stage.kind}: {ended} at step {result.steps}, loss {loss}{held_out}{skipped}; {out / stage.kind}",
                      markup=False)
