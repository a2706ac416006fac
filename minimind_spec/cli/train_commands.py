"""`train`: the training plan of a spec (`--plan`, front end only) and the run itself.

The command resolves the spec once, builds its graph once and the plan once; `--plan` prints
it, a run hands the same plan and graph to the engine, which executes exactly that. Each stage
kind's data option (`--pretrain-data`, `--sft-data`, ...) comes from the stage registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import TrainingOverrides
from ..errors import Problem, SpecError
from ..graph import build_graph
from ..loader import load_spec
from ..model_files import is_foreign_checkpoint
from ..plan import DeviceFacts, PlanInputs, TrainingPlan, build_plan, with_throughput
from ..resolve import resolve
from ..stages import STAGE_ORDER, STAGES, StageKind
from .app import app, err_console, guarded, print_json
from .options import AsJson, SpecPath, Variant
from .plan_report import print_outputs, print_plan, print_results, print_warnings

EXIT_INTERRUPTED = 130


def _opt(*names: str, help: str, **bounds: Any) -> Any:  # noqa: A002 - typer's own keyword
    return typer.Option(*names, help=help, show_default=False, **bounds)


def with_stage_data_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one `--<stage>-data FILE` option per stage kind of the registry to `command`'s signature
    (it receives them as `<stage>_data` keyword arguments)."""
    signature = inspect.signature(command, eval_str=True)  # the annotations as objects: typer reads them from here
    fixed = [p for p in signature.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    data = [inspect.Parameter(f"{d.kind}_data", inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=Annotated[Path | None, _opt(d.data_flag, d.data_flag.replace("-", "_").replace("__", "--"),
                                                                     help=f"{d.summary.capitalize()}: {d.data_format}.")])
            for d in STAGES]
    setattr(command, "__signature__", signature.replace(parameters=[*fixed, *data]))  # what typer reads
    return command


@app.command("train")
@guarded
@with_stage_data_options
def train_command(
    spec: SpecPath,
    plan: Annotated[bool, typer.Option("--plan", help="Print the plan: every stage with its settings, where each came from, "
                                       "warnings and estimates. Reads no data, loads no weights, starts as fast as validate.")] = False,
    as_json: AsJson = False,
    variant: Variant = None,
    stage: Annotated[list[str] | None, _opt("--stage", help=f"Only this stage (repeatable): {', '.join(STAGE_ORDER)}; "
                                            "lora = sft with LoRA adapters (--stage sft --lora).")] = None,
    init: Annotated[Path | None, _opt("--init", help="Start from this trained base (a run, stage, checkpoint or model "
                                           "directory, or a MiniMind .pth / convert_model.py directory, checked to fit "
                                           "the spec exactly): pretraining is skipped.")] = None,
    teacher: Annotated[Path | None, _opt("--teacher", help="The distillation teacher's trained model (a run, stage, "
                                         "checkpoint or model directory), with the student's tokenizer.")] = None,
    tokenizer: Annotated[Path | None, _opt("--tokenizer", help="Tokenizer directory (tokenizer.json); its size must equal "
                                           "the spec's vocab.")] = None,
    micro_batch: Annotated[int | None, _opt("--micro-batch", "--micro_batch", min=1, help="Sequences per forward pass; "
                                            "the rest of the batch is gradient accumulation. A memory knob: the loss and "
                                            "gradients do not change.")] = None,
    seq_len: Annotated[int | None, _opt("--seq-len", "--seq_len", min=1, help="Row length in tokens of every stage run "
                                        "(at most the model's positions).")] = None,
    tokens_per_s: Annotated[float | None, _opt("--tokens-per-s", "--tokens_per_s", min=1e-9, help="Training throughput for the "
                                               "wall-time estimate.")] = None,
    probe: Annotated[bool, typer.Option("--probe", help="With --plan: measure the tokens/s of the stages without a frozen "
                                        "model by training the real model for a few steps on random tokens (on --device), "
                                        "for the wall-time estimate. Loads torch; takes seconds to minutes.")] = False,
    lr: Annotated[float | None, _opt("--lr", help="Peak learning rate of every stage run (overrides techniques.<stage>.lr "
                                     "and optim.lr).")] = None,
    batch_size: Annotated[int | None, _opt("--batch-size", "--batch_size", help="Sequences (DPO: pairs; GRPO: prompts) per optimizer step.")] = None,
    max_steps: Annotated[int | None, _opt("--max-steps", "--max_steps", help="Optimizer steps per stage.")] = None,
    warmup: Annotated[int | None, _opt("--warmup", help="Linear warmup steps.")] = None,
    weight_decay: Annotated[float | None, _opt("--weight-decay", "--weight_decay", help="AdamW weight decay.")] = None,
    grad_clip: Annotated[float | None, _opt("--grad-clip", "--grad_clip", help="Clip the gradient norm to this.")] = None,
    label_smoothing: Annotated[float | None, _opt("--label-smoothing", "--label_smoothing", help="Label smoothing.")] = None,
    epochs: Annotated[int | None, _opt("--epochs", help="Passes over each stage's data (when --max-steps is not set).")] = None,
    dpo_beta: Annotated[float | None, _opt("--dpo-beta", "--dpo_beta", help="DPO beta.")] = None,
    temperature: Annotated[float | None, _opt("--temperature", help="Distillation temperature.")] = None,
    lora: Annotated[bool | None, typer.Option("--lora/--no-lora", help="Train LoRA adapters only in the post-training "
                                              "stages (overrides techniques.lora.enabled).", show_default=False)] = None,
    lora_rank: Annotated[int | None, _opt("--lora-rank", "--lora_rank", help="LoRA rank r.")] = None,
    lora_alpha: Annotated[float | None, _opt("--lora-alpha", "--lora_alpha", help="LoRA alpha (the update is alpha / r x BA).")] = None,
    lora_targets: Annotated[str | None, _opt("--lora-targets", "--lora_targets", help="Comma-separated projections that get "
                                             "adapters, e.g. q_proj,v_proj (overrides techniques.lora.placements).")] = None,
    trainable_tokens: Annotated[str | None, typer.Option(
        "--trainable-tokens", help="LoRA: tokens whose embedding (and untied head) rows train beside the adapters: auto "
        "(the tokenizer's special tokens when the start model never trained on conversations), none, or a comma-separated "
        "list of tokens or ids such as '<think>,</think>' (overrides techniques.lora.trainable_tokens).",
        show_default=False)] = None,
    bf16: Annotated[bool, typer.Option("--bf16", help="bf16 autocast with fp32 master weights (hyperparams.dtype "
                                       "bfloat16).")] = False,
    doc_mask: Annotated[bool, typer.Option("--doc-mask", help="Pretraining: each document of a row attends to itself only, "
                                           "its positions from 0 (techniques.pretrain.doc_mask).")] = False,
    out: Annotated[Path | None, _opt("--out", "-o", help="Run directory: per stage its checkpoints, metrics.jsonl, plots "
                                     "and final/ weights.")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of the initial weights and the data order.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda or mps.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint, exactly.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Resume although the stage's settings changed, or train into an "
                                        "--out that holds another model's run or other files.")] = False,
    no_pack: Annotated[bool, typer.Option("--no-pack", help="One sample per row, padded to seq_len (no packing), "
                                          "for comparison.")] = False,
    skip_bad_lines: Annotated[bool, typer.Option("--skip-bad-lines", help="Skip malformed data lines (counted) "
                                                 "instead of stopping at the first.")] = False,
    eval_every: Annotated[int, typer.Option("--eval-every", min=0, help="Held-out loss every N steps (0: never).")] = 50,
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
    **stage_data: Path | None,
) -> None:
    """Plan and run the spec's training: pretrain -> sft -> distill -> dpo -> grpo, LoRA as the adapter mode.

    Each stage takes its schedule and batch from `techniques.<stage>`, else the global `optim` /
    `regularization` / `hyperparams.seq_len`, else its recipe (e.g. DPO lr 1e-6, trl's default);
    command-line values override them all for the stages run and show as `cli: --flag`. A stage
    without data (or teacher) is shown as blocked, with the flag that unblocks it.

    Runs: `--out RUN_DIR --tokenizer DIR` and each stage's data; each stage starts from the
    previous one's final model (or `--init`); `--resume` continues exactly; under torchrun the
    same command trains with DDP (or `--fsdp`). Packed rows keep their samples apart, and the
    loss is divided by the whole step's token count, so `--micro-batch` and the process count
    change memory and speed, never the result. docs/training.md has the details.

    Examples: `minimind-spec train spec/minimind.json --plan`,
    `... --plan --sft-data data/sft.jsonl --max-steps 200 --probe`, `... --plan --json`,
    `... --pretrain-data p.jsonl --sft-data s.jsonl --tokenizer tok/ --out runs/a`,
    `... --stage lora --lora_rank 8 --lr 1e-4 --batch_size 8 --epochs 3 --bf16 --sft-data s.jsonl ...` (the card's recipe),
    `... --stage grpo --init runs/a --grpo-data prompts.jsonl --tokenizer tok/ --out runs/b` (GRPO: prompts with
    answers, completions sampled and scored by the rules of techniques.grpo.rewards; batch counts prompts).
    """
    if stage and "lora" in stage:  # the card's recipe: `--stage lora` is SFT training adapters only
        stage = ["sft" if name == "lora" else name for name in stage]
        lora = True if lora is None else lora
    unknown = [name for name in stage or [] if name not in STAGE_ORDER]
    if unknown:
        raise SpecError(Problem("", f"unknown stage {unknown[0]!r}", f"one of: {', '.join(STAGE_ORDER)}"))
    if probe and not plan:
        raise SpecError(Problem("", "--probe measures throughput for the plan", "add --plan"))
    if not plan and (out is None or tokenizer is None):
        raise SpecError(Problem("", "a training run needs --out RUN_DIR and --tokenizer DIR", "or add --plan to see the plan"))
    overrides = TrainingOverrides(
        lr=lr, micro_batch=micro_batch, seq_len=seq_len, document_mask=doc_mask or None, batch_size=batch_size,
        max_steps=max_steps, warmup=warmup, weight_decay=weight_decay, grad_clip=grad_clip, label_smoothing=label_smoothing,
        epochs=epochs, dpo_beta=dpo_beta, temperature=temperature, lora=lora, lora_rank=lora_rank, lora_alpha=lora_alpha,
        lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()) if lora_targets is not None else None,
        bf16=bf16 or None)
    tokenizer_vocab = None
    if tokenizer is not None:
        from ..engine.data.tokenizer import load_tokenizer  # torch-free

        tokenizer_vocab = load_tokenizer(tokenizer).vocab_size
    runs = not plan or probe  # torch is loaded: the device can be asked what it supports
    facts = _device_facts(device) if runs else DeviceFacts.named(device)
    inputs = PlanInputs(
        data={StageKind(kind.removesuffix("_data")): path for kind, path in stage_data.items() if path is not None},
        init=init, teacher=teacher, stages=tuple(StageKind(s) for s in stage) if stage else None, tokens_per_s=tokens_per_s,
        tokenizer_vocab=tokenizer_vocab, processes=nproc if nproc is not None else int(os.environ.get("WORLD_SIZE", "1")),
        fsdp=fsdp, precompute_ref=precompute_ref, pack=not no_pack, device=facts)
    loaded = load_spec(spec)
    if tokenizer is not None:
        overrides = _with_trainable_tokens(overrides, loaded, trainable_tokens, tokenizer, init, stage)
    resolved = resolve(loaded, variant, overrides)
    graph = build_graph(resolved)
    training_plan = build_plan(resolved, inputs, graph)
    if probe:
        training_plan = _probe(graph, training_plan, resolved.model.vocab_size, facts.kind)
    if not plan:
        picked = device if device != "auto" else facts.kind  # keeps a device index: cuda:1
        with contextlib.ExitStack() as scope:
            if init is not None and is_foreign_checkpoint(init):  # a MiniMind .pth: imported (exact fit) for this run
                from ..engine.minimind_import import imported_model

                init = scope.enter_context(imported_model(init, resolved)).config.parent
            _run(resolved, graph, training_plan, tokenizer, out, init, seed, picked, resume, force, skip_bad_lines, eval_every,
                 save_every, deterministic, no_progress, fsdp, compile_model)
        return
    if as_json:
        print_json(training_plan.to_json())
        return
    print_plan(training_plan, str(spec))


def _with_trainable_tokens(overrides: TrainingOverrides, spec: Any, flag: str | None, tokenizer: Path, init: Path | None,
                           stages: list[str] | None) -> TrainingOverrides:
    """LoRA's trainable tokens made concrete with the tokenizer and the history of the model LoRA starts from."""
    from ..engine.data.trainable_tokens import choose_trainable_tokens, parse_flag, trained_stages  # torch-free

    if flag is not None:
        entries, where = parse_flag(flag), "cli: --trainable-tokens"
    else:
        entries, where = spec.techniques.lora.trainable_tokens, "spec:/techniques/lora/trainable_tokens"
        if "trainable_tokens" not in spec.techniques.lora.model_fields_set:
            where = "default"
    if init is not None:
        history = trained_stages(init)
    else:  # the run's own stages before its first post-training stage (pretraining, or nothing: a random base)
        history = ("pretrain",) if not stages or "pretrain" in stages else ()
    ids, why = choose_trainable_tokens(entries, tokenizer, history, where)
    return dataclasses.replace(overrides, trainable_tokens=ids, trainable_tokens_why=why)


def _device_facts(device: str) -> DeviceFacts:
    from ..engine.train.devices import device_facts

    return device_facts(device)


def _probe(graph: Any, training_plan: TrainingPlan, vocab_size: int, device: str) -> TrainingPlan:
    from ..engine.train.probe import probe_stage, probed

    steps = 3
    rates = {}
    for stage in training_plan.stages:
        if not probed(stage.kind):
            err_console.print(f"probe: {stage.kind} is not probed (it needs its data and frozen model); "
                              "--tokens-per-s N gives its wall time")
            continue
        err_console.print(f"probe: {stage.kind}, {steps} + 1 steps of {stage.batch_size} x {stage.seq_len} tokens on {device} ...")
        rates[stage.kind] = probe_stage(graph, stage, vocab_size, device, steps)
    return with_throughput(training_plan, rates, f"probe: median of {steps} steps on {device}")


def _run(resolved: Any, graph: Any, training_plan: TrainingPlan, tokenizer: Path | None, out: Path | None, init: Path | None,
         seed: int, device: str, resume: bool, force: bool, skip_bad_lines: bool, eval_every: int, save_every: int,
         deterministic: bool, no_progress: bool, fsdp: bool, compile_model: bool) -> None:
    assert out is not None and tokenizer is not None
    from ..engine.train.run import RunOptions, run_plan

    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun rank 0 reports
    if main:
        print_warnings(training_plan)
    options = RunOptions(out=out, tokenizer=tokenizer, seed=seed, device=device, skip_bad_lines=skip_bad_lines,
                         eval_every=eval_every, save_every=save_every, resume=resume, force=force, deterministic=deterministic,
                         progress=not no_progress, fsdp=fsdp, compile=compile_model)
    try:
        results = run_plan(resolved, graph, training_plan, options, init)
    except KeyboardInterrupt:
        err_console.print("interrupted before a checkpoint could be saved: nothing of this stage is kept; "
                          "the same command (with --resume if a stage had finished) starts it again")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if not main:
        if results and results[-1].interrupted:
            raise typer.Exit(EXIT_INTERRUPTED)
        return
    print_results(training_plan, results, out)
    print_outputs(training_plan, out)
    if results and results[-1].interrupted:
        err_console.print("interrupted, saved: the same command with --resume continues "
                          f"{'it, then the rest' if len(results) < len(training_plan.stages) else 'it'}")
        raise typer.Exit(EXIT_INTERRUPTED)
