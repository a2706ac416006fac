"""The training loop: one loop for every stage, the stage runner supplies rows and objective.

Each optimizer step takes `batch_size` rows (in micro-batches of `micro_batch`, gradients
accumulated), sets the scheduled lr, clips the global gradient norm, and steps. Rows come in a
fresh order each epoch, a permutation seeded by (seed, epoch), so the data position is two
integers and resuming replays nothing. A non-finite loss skips the step (counted); too many
in a row stop the run with the last good checkpoint intact. Ctrl-C saves a checkpoint at the
next step boundary and exits cleanly. Every step appends a JSONL row (step, loss, lr, tokens,
tokens/s, grad norm, the runner's metrics); every `eval_every` steps the held-out loss and
perplexity. On resume, rows after the checkpoint's step are dropped from the metrics file, so
it reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import networkx as nx
import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file
from torch import nn

from ...config import OptimConfig
from ...errors import InputError
from . import distributed
from .checkpoint import (CheckpointError, TrainState, latest_checkpoint, load_weights, read_optimizer_state, read_state,
                         restore_random_state, save_checkpoint)
from .optim import build_optimizer, lr_factor
from .stages import StageRunner

METRICS_FILE = "metrics.jsonl"


class TrainingStopped(InputError):
    """The run stopped before its last step (too many non-finite losses); reported like bad input."""


@dataclass(frozen=True)
class LoopConfig:
    run_dir: Path
    optim: OptimConfig
    max_steps: int
    batch_size: int
    micro_batch: int
    seed: int
    spec_hash: str
    device: str = "cpu"
    autocast_dtype: torch.dtype | None = None  # bf16 autocast where supported, None for fp32
    eval_every: int = 50
    save_every: int = 50
    keep: int = 3
    max_bad_steps: int = 5
    checkpoints: bool = True  # False: nothing is saved (a throughput probe)
    fsdp: bool = False  # under torchrun: shard weights, gradients and optimizer state (FSDP2) instead of DDP
    compile: bool = False  # train through torch.compile(model) (the same parameters; evaluation stays eager)
    progress: bool = True


@dataclass(frozen=True)
class StageResult:
    steps: int
    last_loss: float | None
    eval_loss: float | None
    skipped_steps: int
    interrupted: bool
    checkpoint: Path


def _epoch_order(rows: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(rows)


def _next_rows(runner: StageRunner, state: TrainState, count: int, seed: int) -> tuple[list[int], TrainState]:
    rows, epoch, position = [], state.epoch, state.position
    order = _epoch_order(runner.train_rows, seed, epoch)
    while len(rows) < count:
        if position >= len(order):
            epoch, position = epoch + 1, 0
            order = _epoch_order(runner.train_rows, seed, epoch)
        take = min(count - len(rows), len(order) - position)
        rows += order[position:position + take].tolist()
        position += take
    return rows, replace(state, epoch=epoch, position=position)


@torch.no_grad()
def evaluate(model: nn.Module, runner: StageRunner, config: LoopConfig) -> tuple[float | None, dict[str, float]]:
    """The held-out loss over the runner's eval rows and the held-out means of its numeric metrics,
    each batch weighted by its `eval_weight` ((None, {}) when there are no eval rows)."""
    rows = runner.eval_rows.tolist()
    if not rows:
        return None, {}
    was_training = model.training
    model.eval()
    total = weight = 0.0
    sums: dict[str, float] = {}
    for start in range(0, len(rows), config.micro_batch):
        batch = runner.batch(rows[start:start + config.micro_batch], config.device)
        with _autocast(config):
            loss, metrics = runner.objective(model, batch)
        n = batch.eval_weight
        total += float(loss) * n
        weight += n
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                sums[key] = sums.get(key, 0.0) + float(value) * n
    model.train(was_training)
    if not weight:
        return None, {}
    return total / weight, {key: value / weight for key, value in sums.items()}


def _autocast(config: LoopConfig):  # noqa: ANN202
    if config.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(config.device).type, dtype=config.autocast_dtype)


@contextmanager
def _interrupt_flag() -> Iterator[dict[str, bool]]:
    """Ctrl-C sets a flag instead of raising, so the loop stops at a step boundary."""
    flag = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        flag["stop"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler, Ctrl-C raises as usual
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _metrics_rows(path: Path, up_to_step: int) -> None:
    """Keep the metrics rows of steps <= up_to_step (the rest are redone after a resume)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= up_to_step]
    path.write_text("".join(line + "\n" for line in kept))


def _save(config: LoopConfig, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
          world: distributed.World, sharded: bool) -> None:
    """A checkpoint by rank 0 (sharded, every rank first takes part in gathering the full state)."""
    if world.is_main or sharded:
        weights, optimizer_state = distributed.full_state(model, optimizer, sharded)
        if world.is_main:
            save_checkpoint(config.run_dir, weights, optimizer_state or {}, state, config.keep)
    distributed.barrier(world)


def run_stage(model: nn.Module, graph: nx.DiGraph, runner: StageRunner, config: LoopConfig, resume: bool = False,
              force: bool = False) -> StageResult:
    """Train `model` with `runner` for `config.max_steps` optimizer steps (resuming when asked).
    Under torchrun each rank trains its block of every step's rows (see `distributed`)."""
    world = distributed.current()
    if config.batch_size % world.size:
        raise CheckpointError(f"the batch size {config.batch_size} does not divide over {world.size} processes")
    per_rank = config.batch_size // world.size
    micro = min(config.micro_batch, per_rank)
    if per_rank % micro:
        raise CheckpointError(f"the micro-batch {micro} does not divide the {per_rank} rows each process trains per step")
    config.run_dir.mkdir(parents=True, exist_ok=True)
    sharded = config.fsdp and world.distributed
    if sharded:
        distributed.shard(model)  # before the optimizer: it holds the sharded parameters
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, graph, config.optim)
    state = TrainState(runner.kind, 0, 0, 0, 0, 0, config.spec_hash, config.seed)
    checkpoint = latest_checkpoint(config.run_dir)
    if resume and checkpoint is not None:
        saved = read_state(checkpoint)
        if saved.spec_hash != config.spec_hash and not force:
            raise CheckpointError(f"{checkpoint} was trained from another spec (hash {saved.spec_hash[:12]}, now "
                                  f"{config.spec_hash[:12]}); `minimind-spec diff` shows what changed; --force resumes anyway")
        if sharded:
            distributed.load_full_state(model, optimizer, load_file(str(checkpoint / "model.safetensors")),
                                        read_optimizer_state(checkpoint), sharded=True)
        else:
            load_weights(model, checkpoint)
            optimizer.load_state_dict(read_optimizer_state(checkpoint))
        state = replace(restore_random_state(checkpoint), spec_hash=config.spec_hash)
    elif checkpoint is not None and not resume and world.is_main:
        raise CheckpointError(f"{config.run_dir} already holds a run (at {checkpoint.name}): --resume continues it, "
                              "or choose another --out")
    else:
        torch.manual_seed(config.seed)
    distributed.barrier(world)  # every rank has read the checkpoint before rank 0 may write the next one
    train_model: nn.Module = model
    if config.compile:
        train_model = torch.compile(model)
    if world.distributed and not sharded:
        train_model = torch.nn.parallel.DistributedDataParallel(train_model)
    metrics_path = config.run_dir / METRICS_FILE
    if world.is_main:
        _metrics_rows(metrics_path, state.step)
    accumulation = per_rank // micro
    bad_streak, last_loss, eval_loss = 0, None, None
    model.train()
    progress = Progress(TextColumn(f"[bold]{runner.kind}[/bold]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("{task.fields[status]}"), TimeRemainingColumn(), disable=not (config.progress and world.is_main),
                        transient=False)
    with _interrupt_flag() as interrupt, progress, open(metrics_path if world.is_main else os.devnull, "a", encoding="utf-8") as metrics:
        task = progress.add_task("train", total=config.max_steps, completed=state.step, status="")
        while state.step < config.max_steps and not interrupt["stop"]:
            started = time.perf_counter()
            rows, state = _next_rows(runner, state, config.batch_size, config.seed)
            rows = rows[world.rank * per_rank:(world.rank + 1) * per_rank]  # this rank's block
            lr = config.optim.lr * lr_factor(state.step, config.optim.warmup, config.max_steps, config.optim.scheduler,
                                             config.optim.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss_sum, tokens, extra = 0.0, 0, {}
            for start in range(0, len(rows), micro):
                batch = runner.batch(rows[start:start + micro], config.device)
                last = start + micro >= len(rows)
                if sharded:
                    model.set_requires_gradient_sync(last)  # type: ignore[operator]  # reduce-scatter on the last only
                sync = nullcontext() if last or not world.distributed or sharded else train_model.no_sync()  # type: ignore[operator]
                with sync:
                    with _autocast(config):
                        loss, extra = runner.objective(train_model, batch)
                    (loss / accumulation).backward()
                loss_sum += float(loss.detach()) / accumulation
                tokens += batch.real_tokens
            loss_sum = distributed.mean(loss_sum, world, config.device)
            tokens = distributed.total(tokens, world, config.device)
            if not math.isfinite(loss_sum):
                bad_streak += 1
                state = replace(state, step=state.step + 1, skipped_steps=state.skipped_steps + 1)
                optimizer.zero_grad(set_to_none=True)
                if bad_streak >= config.max_bad_steps:
                    raise TrainingStopped(f"{bad_streak} non-finite losses in a row at step {state.step}; the last good "
                                          f"checkpoint is {latest_checkpoint(config.run_dir)}")
                continue
            bad_streak = 0
            clip = config.optim.grad_clip if config.optim.grad_clip is not None else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor under FSDP
            optimizer.step()
            state = replace(state, step=state.step + 1, tokens_seen=state.tokens_seen + tokens)
            last_loss = loss_sum
            elapsed = time.perf_counter() - started
            row: dict[str, Any] = {"step": state.step, "loss": loss_sum, "lr": lr, "tokens": state.tokens_seen,
                                   "tokens_per_s": tokens / elapsed if elapsed else None, "grad_norm": grad_norm, **extra}
            if config.eval_every and (state.step % config.eval_every == 0 or state.step == config.max_steps) and (
                    world.is_main or sharded):  # sharded, every rank takes part in the forward's gathers
                eval_loss, eval_metrics = evaluate(model, runner, config)  # not the DDP wrapper: no collective on one rank
                if eval_loss is not None:
                    row |= {"eval_loss": eval_loss, **{f"eval_{key}": value for key, value in eval_metrics.items()}}
                    if "lm_loss" in eval_metrics:  # a language-model objective: its held-out perplexity
                        row["eval_perplexity"] = math.exp(min(eval_metrics["lm_loss"], 50.0))
            warnings = runner.watch(state.step, row)
            if warnings:
                row["warnings"] = warnings
                for warning in warnings:
                    if world.is_main:
                        progress.console.print(f"[yellow]warning[/yellow]: {warning}")
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            if config.checkpoints and (state.step % config.save_every == 0 or state.step == config.max_steps or interrupt["stop"]):
                _save(config, model, optimizer, state, world, sharded)
            progress.update(task, completed=state.step,
                            status=f"loss {loss_sum:.4f}  lr {lr:.2e}  {row['tokens_per_s'] or 0:,.0f} tok/s")
    final = latest_checkpoint(config.run_dir)
    if config.checkpoints and (final is None or int(final.name.split("-")[1]) != state.step):
        _save(config, model, optimizer, state, world, sharded)
    distributed.barrier(world)
    final = latest_checkpoint(config.run_dir) or config.run_dir
    return StageResult(state.step, last_loss, eval_loss, state.skipped_steps, interrupt["stop"], final)
