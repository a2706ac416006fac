"""`train`: the training plan of a spec (`--plan`, front end only) and, later, the run itself."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.tree import Tree

from ..config import TrainingOverrides
from ..errors import Problem, SpecError
from ..loader import load_spec
from ..config import ResolvedSpec
from ..plan import STAGE_ORDER, PlanInputs, StagePlan, TrainingPlan, build_plan, with_throughput
from ..resolve import resolve
from .app import EXIT_USAGE, app, console, err_console, guarded, print_json
from .options import AsJson, SpecPath, Variant
from .reports import fmt_bytes



def _opt(*names: str, help: str, **bounds: Any) -> Any:  # noqa: A002 - typer's own keyword
    return typer.Option(*names, help=help, show_default=False, **bounds)


@app.command("train")
@guarded
def train_command(
    spec: SpecPath,
    plan: Annotated[bool, typer.Option("--plan", help="Print the plan: every stage with its settings, where each came from, "
                                       "and estimates. Reads no data, loads no weights, starts as fast as validate.")] = False,
    as_json: AsJson = False,
    variant: Variant = None,
    stage: Annotated[list[str] | None, _opt("--stage", help="Only this stage (repeatable): pretrain, sft, distill, dpo; "
                                            "lora = sft with LoRA adapters (--stage sft --lora).")] = None,
    pretrain_data: Annotated[Path | None, _opt("--pretrain-data", "--pretrain_data", help='Pretraining JSONL ({"text": ...}).')] = None,
    sft_data: Annotated[Path | None, _opt("--sft-data", "--sft_data", help='SFT JSONL ({"conversations": [...]}).')] = None,
    distill_data: Annotated[Path | None, _opt("--distill-data", "--distill_data", help="Distillation JSONL (conversations).")] = None,
    dpo_data: Annotated[Path | None, _opt("--dpo-data", "--dpo_data", help='Preference JSONL ({"chosen", "rejected"}).')] = None,
    init: Annotated[Path | None, _opt("--init", help="Start from this trained base (a run, stage, checkpoint or model "
                                           "directory): pretraining is skipped.")] = None,
    teacher: Annotated[Path | None, _opt("--teacher", help="The distillation teacher's trained model (a run, stage, "
                                         "checkpoint or model directory), with the student's tokenizer.")] = None,
    tokenizer: Annotated[Path | None, _opt("--tokenizer", help="Tokenizer directory (tokenizer.json); its size must equal "
                                           "the spec's vocab.")] = None,
    micro_batch: Annotated[int | None, _opt("--micro-batch", "--micro_batch", min=1, help="Sequences per forward pass; "
                                            "the rest of the batch is gradient accumulation.")] = None,
    tokens_per_s: Annotated[float | None, _opt("--tokens-per-s", "--tokens_per_s", min=1e-9, help="Training throughput for the "
                                               "wall-time estimate.")] = None,
    probe: Annotated[bool, typer.Option("--probe", help="With --plan: measure the pretrain and SFT stages' tokens/s by training the real "
                                        "model for a few steps on random tokens (on --device), for the wall-time "
                                        "estimate. Loads torch; takes seconds to minutes.")] = False,
    lr: Annotated[float | None, _opt("--lr", help="Peak learning rate (overrides optim.lr).")] = None,
    batch_size: Annotated[int | None, _opt("--batch-size", "--batch_size", help="Sequences per optimizer step.")] = None,
    max_steps: Annotated[int | None, _opt("--max-steps", "--max_steps", help="Optimizer steps per stage.")] = None,
    warmup: Annotated[int | None, _opt("--warmup", help="Linear warmup steps.")] = None,
    weight_decay: Annotated[float | None, _opt("--weight-decay", "--weight_decay", help="AdamW weight decay.")] = None,
    grad_clip: Annotated[float | None, _opt("--grad-clip", "--grad_clip", help="Clip the gradient norm to this.")] = None,
    label_smoothing: Annotated[float | None, _opt("--label-smoothing", "--label_smoothing", help="Label smoothing.")] = None,
    epochs: Annotated[int | None, _opt("--epochs", help="Passes over the fine-tuning data.")] = None,
    dpo_beta: Annotated[float | None, _opt("--dpo-beta", "--dpo_beta", help="DPO beta.")] = None,
    temperature: Annotated[float | None, _opt("--temperature", help="Distillation temperature.")] = None,
    lora: Annotated[bool | None, typer.Option("--lora/--no-lora", help="Train LoRA adapters only in the post-training "
                                              "stages (overrides techniques.lora.enabled).", show_default=False)] = None,
    lora_rank: Annotated[int | None, _opt("--lora-rank", "--lora_rank", help="LoRA rank r.")] = None,
    lora_alpha: Annotated[float | None, _opt("--lora-alpha", "--lora_alpha", help="LoRA alpha (the update is alpha / r x BA).")] = None,
    lora_targets: Annotated[str | None, _opt("--lora-targets", "--lora_targets", help="Comma-separated projections that get "
                                             "adapters, e.g. q_proj,v_proj (overrides techniques.lora.placements).")] = None,
    bf16: Annotated[bool, typer.Option("--bf16", help="bf16 autocast with fp32 master weights (hyperparams.dtype "
                                       "bfloat16).")] = False,
    out: Annotated[Path | None, _opt("--out", "-o", help="Run directory: per stage its checkpoints, metrics.jsonl "
                                     "and final/ weights.")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of the initial weights and the data order.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda or mps.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint, exactly.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Resume even though the spec changed since the checkpoint.")] = False,
    no_pack: Annotated[bool, typer.Option("--no-pack", help="One sample per row, padded to seq_len (no packing), "
                                          "for comparison.")] = False,
    skip_bad_lines: Annotated[bool, typer.Option("--skip-bad-lines", help="Skip malformed data lines (counted) "
                                                 "instead of stopping at the first.")] = False,
    eval_every: Annotated[int, typer.Option("--eval-every", min=0, help="Held-out perplexity every N steps.")] = 50,
    save_every: Annotated[int, typer.Option("--save-every", min=1, help="Checkpoint every N steps.")] = 50,
    deterministic: Annotated[bool, typer.Option("--deterministic", help="Deterministic kernels (bit-exact resume on CPU).")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar (logs only).")] = False,
    fsdp: Annotated[bool, typer.Option("--fsdp", help="Under torchrun: shard weights, gradients and optimizer state over "
                                       "the processes (FSDP2) instead of replicating them (DDP); for models too large "
                                       "for one device. The plan shows the per-process memory.")] = False,
    precompute_ref: Annotated[bool, typer.Option("--precompute-ref", help="DPO: compute the reference log-probs once, "
                                                 "before training, so only the policy is in memory.")] = False,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model for training (slower start, "
                                                "faster steps on GPUs).")] = False,
    nproc: Annotated[int | None, _opt("--nproc", min=1, help="Processes the run will use (default: torchrun's WORLD_SIZE, "
                                      "else 1): the plan's batch split and, with --fsdp, per-process memory.")] = None,
) -> None:
    """Plan and run the spec's training: pretrain -> sft -> distill -> dpo, LoRA as the adapter mode.

    Command-line values override the spec and show as `cli: --flag` provenance; where the spec is
    silent, a stage takes the card's recipe (SFT batch 8, seq_len 1024, warmup 100; DPO grad_clip 1.0).
    A stage without data (or teacher) is shown as blocked, with the flag that unblocks it.

    Runs: `--out RUN_DIR --tokenizer DIR` and each stage's data; each stage starts from the
    previous one's final model (or `--init`); `--resume` continues exactly; under torchrun the
    same command trains with DDP (or `--fsdp`). docs/training.md has the details.

    Examples: `minimind-spec train spec/minimind.json --plan`,
    `... --plan --sft-data data/sft.jsonl --max-steps 200 --probe`, `... --plan --json`,
    `... --pretrain-data p.jsonl --sft-data s.jsonl --tokenizer tok/ --out runs/a`,
    `... --stage lora --lora_rank 8 --lr 1e-4 --batch_size 8 --epochs 3 --bf16 --sft-data s.jsonl ...` (the card's recipe).
    """
    if stage and "lora" in stage:  # the card's recipe: `--stage lora` is SFT training adapters only
        stage = ["sft" if name == "lora" else name for name in stage]
        lora = True if lora is None else lora
    unknown = [name for name in stage or [] if name not in STAGE_ORDER]
    if unknown:
        raise SpecError(Problem("", f"unknown stage {unknown[0]!r}", f"one of: {', '.join(STAGE_ORDER)}"))
    overrides = TrainingOverrides(lr=lr, batch_size=batch_size, max_steps=max_steps, warmup=warmup, weight_decay=weight_decay,
                                  grad_clip=grad_clip, label_smoothing=label_smoothing, epochs=epochs, dpo_beta=dpo_beta,
                                  temperature=temperature, lora=lora, lora_rank=lora_rank, lora_alpha=lora_alpha,
                                  lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip())
                                  if lora_targets is not None else None, bf16=bf16 or None)
    data = {kind: path for kind, path in (("pretrain", pretrain_data), ("sft", sft_data), ("distill", distill_data),
                                          ("dpo", dpo_data)) if path is not None}
    tokenizer_vocab = None
    if tokenizer is not None:
        from ..engine.data.tokenizer import load_tokenizer  # torch-free

        tokenizer_vocab = load_tokenizer(tokenizer).vocab_size
    processes = nproc if nproc is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if processes < 1:
        raise SpecError(Problem("", f"--nproc {processes}: at least 1"))
    inputs = PlanInputs(data=data, init=init, teacher=teacher, stages=tuple(stage) if stage else None,  # type: ignore[arg-type]
                        micro_batch=micro_batch, tokens_per_s=tokens_per_s, tokenizer_vocab=tokenizer_vocab,
                        processes=processes, fsdp=fsdp)
    resolved = resolve(load_spec(spec), variant, overrides)
    training_plan = build_plan(resolved, inputs)
    if probe:
        if not plan:
            raise SpecError(Problem("", "--probe measures throughput for the plan", "add --plan"))
        training_plan = _probe(resolved, training_plan, device)
    if not plan:
        _run(training_plan, spec, variant, overrides, tokenizer, out, init, seed, device, resume, force, no_pack,
             skip_bad_lines, eval_every, save_every, deterministic, no_progress, fsdp, compile_model, teacher, precompute_ref)
        return
    if as_json:
        print_json(plan_to_json(training_plan))
        return
    print_plan(training_plan, str(spec))


def _probe(resolved: ResolvedSpec, training_plan: TrainingPlan, device: str) -> TrainingPlan:
    from ..engine.train.probe import PROBED_KINDS, probe_stage
    from ..engine.train.run import pick_device
    from ..graph import build_graph

    device = pick_device(device)
    graph = build_graph(resolved)
    steps = 3
    rates = {}
    for stage in training_plan.stages:
        if stage.kind not in PROBED_KINDS:
            err_console.print(f"probe: {stage.kind} is not probed (it needs its data and frozen model); "
                              "--tokens-per-s N gives its wall time")
            continue
        err_console.print(f"probe: {stage.kind}, {steps} + 1 steps of {stage.batch_size} x {stage.seq_len} tokens on {device} ...")
        rates[stage.kind] = probe_stage(resolved, graph, stage, device, steps)
    return with_throughput(training_plan, rates, f"probe: median of {steps} steps on {device}")


def plan_to_json(training_plan: TrainingPlan) -> dict[str, Any]:
    out = dataclasses.asdict(training_plan)
    for stage, plan in zip(out["stages"], training_plan.stages):
        stage["memory"]["total"] = plan.memory.total
        stage["trainable_percent"] = round(plan.trainable_percent, 4)
        stage["runnable"] = plan.blocked is None
    return out


def _flops(n: int | None) -> str:
    return "?" if n is None else f"{n:.3g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _stage_tree(index: int, plan: StagePlan) -> Tree:
    status = "[green]runnable[/green]" if plan.blocked is None else f"[yellow]blocked: {plan.blocked} -> {plan.unblock}[/yellow]"
    node = Tree(f"[bold]{index}. {plan.kind}[/bold]  {status}")
    prov = plan.provenance
    node.add(f"objective: {plan.objective}")
    node.add(f"data: {plan.data or '-'}  [dim]({plan.data_format})[/dim]")
    node.add(f"trains: {', '.join(plan.trainable_roles)}: {plan.trainable_params:,} of {plan.total_params:,} parameters "
             f"({plan.trainable_percent:.2f}%), from {plan.init_from}  [dim]({prov['trainable_roles']})[/dim]")
    if plan.active_params < plan.total_params:
        node.add(f"per token: {plan.active_params:,} active of {plan.total_params:,} parameters "
                 f"({100 * plan.active_params / plan.total_params:.1f}%; MoE routes each token to its top-k experts)")
    for contradiction in plan.declared:
        node.add(f"[yellow]declared vs compiled: {contradiction}[/yellow]")
    if plan.frozen_model:
        node.add(f"frozen: {plan.frozen_model}")
    node.add(f"optimizer: {plan.optimizer}, lr {plan.lr:g} [dim]({prov['lr']})[/dim]; decay on {plan.decay_params:,}, "
             f"none on {plan.no_decay_params:,} (norms, embeddings)")
    node.add(f"schedule: {plan.schedule}  [dim](warmup: {prov['warmup']})[/dim]")
    node.add(f"batch {plan.batch_size} [dim]({prov['batch_size']})[/dim] x seq_len {plan.seq_len} [dim]({prov['seq_len']})[/dim]; "
             f"micro-batch {plan.micro_batch}, accumulation {plan.grad_accumulation}"
             f"{f', {plan.processes} processes' if plan.processes > 1 else ''}")
    clip = "off" if plan.grad_clip is None else f"{plan.grad_clip:g}"
    node.add(f"grad clip {clip} [dim]({prov['grad_clip']})[/dim], label smoothing {plan.label_smoothing:g}, {plan.precision}")
    length = f"{plan.max_steps} steps" if plan.max_steps is not None else f"{plan.epochs} epoch{'s' if plan.epochs != 1 else ''}"
    memory = plan.memory
    sharded = f" per process (FSDP over {memory.shards})" if memory.shards > 1 else ""
    node.add(f"peak memory{sharded} {fmt_bytes(memory.total)} = {fmt_bytes(memory.weights)} fp32 weights + "
             f"{fmt_bytes(memory.gradients + memory.optimizer)} grads and optimizer state + {fmt_bytes(memory.activations)} "
             f"activations of one micro-batch + {fmt_bytes(memory.frozen_models)} frozen models")
    node.add(f"length: {length} [dim]({prov['epochs'] if plan.max_steps is None else 'max_steps'})[/dim]; eval: {plan.evaluation}")
    return node


def print_plan(training_plan: TrainingPlan, source: str) -> None:
    title = f"{training_plan.name} ({training_plan.variant or 'base'}) from {source}"
    tree = Tree(f"[bold]Training plan[/bold]: {title}, {len(training_plan.stages)} stages")
    for i, plan in enumerate(training_plan.stages, 1):
        tree.add(_stage_tree(i, plan))
    console.print(tree, soft_wrap=False)  # wrap long lines inside the tree instead of cropping them
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
        err_console.print("wall time needs --tokens-per-s N (or --probe, which measures pretrain and sft stages)")


def _run(training_plan: TrainingPlan, spec: Path, variant: str | None, overrides: TrainingOverrides, tokenizer: Path | None,
         out: Path | None, init: Path | None, seed: int, device: str, resume: bool, force: bool, no_pack: bool,
         skip_bad_lines: bool, eval_every: int, save_every: int, deterministic: bool, no_progress: bool, fsdp: bool,
         compile_model: bool, teacher: Path | None, precompute_ref: bool) -> None:
    if out is None or tokenizer is None:
        raise SpecError(Problem("", "a training run needs --out RUN_DIR and --tokenizer DIR", "or add --plan to see the plan"))
    from ..engine.train.run import RunOptions, run_plan

    options = RunOptions(out=out, tokenizer=tokenizer, seed=seed, device=device, pack=not no_pack, skip_bad_lines=skip_bad_lines,
                         eval_every=eval_every, save_every=save_every, resume=resume, force=force, deterministic=deterministic,
                         progress=not no_progress, fsdp=fsdp, compile=compile_model, teacher=teacher,
                         precompute_ref=precompute_ref)
    results = run_plan(resolve(load_spec(spec), variant, overrides), training_plan, options, init)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun rank 0 reports
    for stage, result in zip(training_plan.stages, results):
        console.print(f"{stage.kind}: trained {', '.join(stage.trainable_roles)}: {stage.trainable_params:,} of "
                      f"{stage.total_params:,} parameters ({stage.trainable_percent:.2f}%)")
        for contradiction in stage.declared:
            err_console.print(f"[yellow]declared vs compiled[/yellow]: {contradiction}")
        ended = "interrupted, saved" if result.interrupted else "done"
        evaluation = f", held-out loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""
        loss = "n/a (no step ran: the stage was already done)" if result.last_loss is None else f"{result.last_loss:.4f}"
        console.print(f"{stage.kind}: {ended} at step {result.steps}, loss {loss}{evaluation}"
                      f"{f', {result.skipped_steps} steps skipped (non-finite loss)' if result.skipped_steps else ''}; "
                      f"{out / stage.kind}")
    if results and results[-1].interrupted and len(results) < len(training_plan.stages):
        console.print("stopped after the interrupted stage: the same command with --resume continues it, then the rest")
