"""The training loop: one loop for every stage; the stage's parts supply rows, objective and watches.

`train_stage` reads top to bottom as set-up, restore, then per step: `train_step`, `evaluate`
every `eval_every` steps, the metrics row and its watches, `save` every `save_every` steps.

- A step takes `batch_size` rows in a fresh seeded order each epoch (the data position is two
  integers, so resuming replays nothing); rank r of N takes the r-th block of them.
- Every micro-batch's loss *sum* is backpropagated divided by the step's total count (all
  micro-batches of all ranks, all-reduced once before the forwards), so the gradient does not
  depend on the micro-batch or the number of processes; the logged loss is the same ratio.
- The scheduled lr, the global gradient norm clipped, the optimizer step (fp16: through the
  GradScaler). A non-finite loss skips its step; `max_bad_steps` in a row stop the run with the
  last good checkpoint intact.
- Ctrl-C stops at the next step boundary after saving a checkpoint; an OS error while saving
  is one message naming the path and the checkpoint that was kept.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import networkx as nx
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

from builders.model import MiniMindForCausalLM
from builders.moe import MoE

from ...errors import InputError
from ...metrics import METRICS_FILE, MetricsLog, MetricsRow
from ...plan import StagePlan
from ..export import load_weights_into
from ..model_io import latest_checkpoint
from . import distributed
from .checkpoint import (CheckpointError, TrainState, read_optimizer_state, read_state, restore_random_state,
                         resumable_checkpoint, save_checkpoint)
from .monitors import expert_load
from .optim import build_optimizer, lr_at
from .precision import PrecisionRuntime
from .stages import StageParts, StoppingWatch


class TrainingStopped(InputError):
    """The run stopped before its last step (too many non-finite losses); reported like bad input."""


@dataclass(frozen=True)
class LoopSettings:
    """How the loop runs (what it trains is the plan's)."""

    stage_dir: Path
    device: str = "cpu"
    seed: int = 0
    eval_every: int = 50
    save_every: int = 50
    keep: int = 3
    max_bad_steps: int = 5
    checkpoints: bool = True  # False: nothing is saved (a throughput probe)
    compile: bool = False  # train through torch.compile(model); evaluation stays eager
    fsdp: bool = False  # under torchrun: shard weights, gradients and optimizer state (FSDP2) instead of DDP
    progress: bool = True
    resume: bool = False
    force: bool = False  # resume although the checkpoint was trained with other decisions
    decisions_hash: str = ""  # of the stage's plan decisions, stored in its checkpoints


@dataclass(frozen=True)
class Evaluation:
    step: int
    loss: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class StageResult:
    steps: int  # optimizer steps done
    total_steps: int
    last_loss: float | None  # None: no step ran (the stage was already done)
    evaluation: Evaluation | None  # the newest held-out evaluation of this run, with its step
    skipped_steps: int
    interrupted: bool
    stopped_by: str | None  # a watch ended the stage early (its reason); the stage's model is saved as final
    resumed_from: int | None  # the checkpoint's step when the stage resumed
    checkpoint: Path


@dataclass
class Trainer:
    """Everything `set_up` builds for one stage's loop."""

    plan: StagePlan
    parts: StageParts
    settings: LoopSettings
    model: MiniMindForCausalLM  # the model itself (checkpoints, evaluation)
    train_model: nn.Module  # what the forward runs through: compiled and/or DDP-wrapped
    optimizer: torch.optim.Optimizer
    precision: PrecisionRuntime
    world: distributed.World
    sharded: bool
    total_steps: int

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]


def total_steps(plan: StagePlan, parts: StageParts) -> int:
    """max_steps, else the epochs over the stage's training rows."""
    return plan.max_steps or max(1, math.ceil(plan.epochs * len(parts.data.train_rows) / plan.batch_size))


def set_up(plan: StagePlan, parts: StageParts, model: MiniMindForCausalLM, graph: nx.DiGraph, settings: LoopSettings,
           precision: PrecisionRuntime) -> Trainer:
    world = distributed.current()
    if plan.batch_size % world.size or (plan.batch_size // world.size) % plan.micro_batch:
        raise CheckpointError(f"the plan splits a batch of {plan.batch_size} over {plan.processes} processes in micro-batches "
                              f"of {plan.micro_batch}, but {world.size} processes are running: plan with --nproc {world.size}")
    settings.stage_dir.mkdir(parents=True, exist_ok=True)
    sharded = settings.fsdp and world.distributed
    if sharded:
        distributed.shard(model)  # before the optimizer: it holds the sharded parameters
    optimizer = build_optimizer(model, graph, plan)
    train_model: nn.Module = cast(nn.Module, torch.compile(model)) if settings.compile else model  # an OptimizedModule
    if world.distributed and not sharded:  # an expert that receives no token in a step has no gradient
        train_model = DistributedDataParallel(train_model, find_unused_parameters=any(isinstance(m, MoE) for m in model.modules()))
    return Trainer(plan, parts, settings, model, train_model, optimizer, precision, world, sharded, total_steps(plan, parts))


def restore(trainer: Trainer) -> tuple[TrainState, int | None]:
    """The state to start from: the latest checkpoint's when resuming (weights, optimizer, every RNG),
    else a fresh one; refuses to train over an existing run. Returns (state, the step resumed from)."""
    settings = trainer.settings
    fresh = TrainState(trainer.plan.kind, 0, 0, 0, 0, 0, settings.decisions_hash, settings.seed)
    checkpoint = resumable_checkpoint(settings.stage_dir, settings.resume)
    if checkpoint is None:
        torch.manual_seed(settings.seed)
        distributed.barrier(trainer.world)
        return fresh, None
    saved = read_state(checkpoint)
    if saved.decisions_hash != settings.decisions_hash and not settings.force:
        raise CheckpointError(f"{checkpoint} was trained with other settings or other data; --force resumes anyway")
    planned = [{k: v for k, v in group.items() if k != "params"} for group in trainer.optimizer.param_groups]
    if trainer.sharded:
        distributed.load_full_state(trainer.model, trainer.optimizer, load_file(str(checkpoint / "model.safetensors")),
                                    read_optimizer_state(checkpoint), sharded=True)
    else:
        load_weights_into(trainer.model, checkpoint / "model.safetensors")
        trainer.optimizer.load_state_dict(read_optimizer_state(checkpoint))
    for group, own in zip(trainer.optimizer.param_groups, planned):  # the plan's hyperparameters, not the checkpoint's
        group.update({key: own[key] for key in ("weight_decay", "betas", "momentum") if key in own})
    state = replace(restore_random_state(checkpoint), decisions_hash=settings.decisions_hash)
    trainer.precision.load_state(state.scaler)
    distributed.barrier(trainer.world)  # every rank has read the checkpoint before rank 0 may write the next one
    return state, state.step


def _epoch_order(rows: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(rows)


def next_rows(rows: np.ndarray, state: TrainState, count: int, seed: int) -> tuple[list[int], TrainState]:
    """The next `count` rows of the seeded epoch orders, and the state after taking them."""
    taken: list[int] = []
    epoch, position = state.epoch, state.position
    order = _epoch_order(rows, seed, epoch)
    while len(taken) < count:
        if position >= len(order):
            epoch, position = epoch + 1, 0
            order = _epoch_order(rows, seed, epoch)
        take = min(count - len(taken), len(order) - position)
        taken += order[position:position + take].tolist()
        position += take
    return taken, replace(state, epoch=epoch, position=position)


class StepSums:
    """A step's sums over its micro-batches (loss, count, count-weighted metrics, expert counts), reduced over the ranks."""

    def __init__(self) -> None:
        self.loss = self.count = 0.0
        self.metrics: dict[str, float] = {}
        self.experts: torch.Tensor | None = None

    def add(self, loss_sum: float, count: float, metrics: dict[str, float], experts: torch.Tensor | None) -> None:
        self.loss += loss_sum
        self.count += count
        for key, value in metrics.items():
            self.metrics[key] = self.metrics.get(key, 0.0) + value * count
        if experts is not None:
            counts = experts.detach().double().cpu()
            self.experts = counts if self.experts is None else self.experts + counts

    def reduced(self, world: distributed.World, device: str) -> tuple[float, dict[str, Any]]:
        """(loss sum / count, metrics: count-weighted means and the expert load) over every rank."""
        keys = sorted(self.metrics)
        experts = self.experts.flatten().tolist() if self.experts is not None else []
        totals = distributed.sums([self.loss, self.count, *(self.metrics[k] for k in keys), *experts], world, device)
        count = max(totals[1], 1e-12)
        metrics: dict[str, Any] = {key: value / count for key, value in zip(keys, totals[2:2 + len(keys)])}
        if self.experts is not None:
            metrics |= expert_load(torch.tensor(totals[2 + len(keys):], dtype=torch.float64).view(self.experts.shape))
        return totals[0] / count, metrics


def _sync(trainer: Trainer, last: bool) -> Any:
    """DDP reduces gradients on the last micro-batch only; FSDP reduce-scatters on the last only."""
    if isinstance(trainer.model, FSDPModule):  # sharded
        trainer.model.set_requires_gradient_sync(last)
        return nullcontext()
    if last or not isinstance(trainer.train_model, DistributedDataParallel):
        return nullcontext()
    return trainer.train_model.no_sync()


def train_step(trainer: Trainer, rows: list[int], lr: float) -> tuple[float, dict[str, Any], int, float | None]:
    """One optimizer step on this rank's block of the step's `rows`: (loss, metrics, real tokens of all
    ranks, gradient norm before clipping; None when the loss was not finite and the step was skipped)."""
    plan, world, device = trainer.plan, trainer.world, trainer.settings.device
    per_rank = plan.batch_size // world.size
    rows = rows[world.rank * per_rank:(world.rank + 1) * per_rank]
    batches = [trainer.parts.data.batch(rows[i:i + plan.micro_batch], device) for i in range(0, len(rows), plan.micro_batch)]
    counts = [trainer.parts.objective.count(batch) for batch in batches]
    step_count, tokens = distributed.sums([sum(counts), sum(b.real_tokens for b in batches)], world, device)
    scale = world.size / step_count if step_count > 0 else 0.0  # DDP and FSDP average over the ranks: undo that
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
    trainer.optimizer.zero_grad(set_to_none=True)
    sums = StepSums()
    for i, (batch, count) in enumerate(zip(batches, counts)):
        with _sync(trainer, i == len(batches) - 1), trainer.precision.autocast():
            out = trainer.parts.objective(trainer.train_model, batch)
        trainer.precision.backward(out.loss_sum * scale)
        sums.add(float(out.loss_sum.detach()), count, out.metrics, out.expert_counts)
    loss, metrics = sums.reduced(world, device)
    if not math.isfinite(loss):
        trainer.optimizer.zero_grad(set_to_none=True)
        return loss, metrics, int(tokens), None
    trainer.precision.unscale(trainer.optimizer)
    clip = plan.grad_clip if plan.grad_clip is not None else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(trainer.params, clip)
    trainer.precision.step(trainer.optimizer)
    return loss, metrics, int(tokens), float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # DTensor under FSDP


@torch.no_grad()
def evaluate(trainer: Trainer, step: int) -> Evaluation | None:
    """The held-out loss (summed over the held-out rows / their count) and count-weighted metrics,
    through the model itself (not the DDP wrapper: no collective on one rank); None without held-out rows."""
    rows = trainer.parts.data.eval_rows.tolist()
    if not rows:
        return None
    model, micro = trainer.model, trainer.plan.micro_batch
    was_training = model.training
    model.eval()
    sums = StepSums()
    for start in range(0, len(rows), micro):
        batch = trainer.parts.data.batch(rows[start:start + micro], trainer.settings.device)
        with trainer.precision.autocast():
            out = trainer.parts.objective(model, batch)
        sums.add(float(out.loss_sum), trainer.parts.objective.count(batch), out.metrics, None)
    model.train(was_training)
    loss, metrics = sums.reduced(distributed.World(), trainer.settings.device)  # every evaluating rank saw every row
    return Evaluation(step, loss, metrics)


def save(trainer: Trainer, state: TrainState) -> None:
    """A checkpoint by rank 0 (sharded, every rank first takes part in gathering the full state). An OS
    error (a full disk, permissions) becomes one message naming the path and the checkpoint kept."""
    world = trainer.world
    if world.is_main or trainer.sharded:
        weights, optimizer_state = distributed.full_state(trainer.model, trainer.optimizer, trainer.sharded)
        if world.is_main:
            state = replace(state, scaler=trainer.precision.state())
            try:
                save_checkpoint(trainer.settings.stage_dir, weights, optimizer_state or {}, state, trainer.settings.keep)
            except OSError as exc:
                kept = latest_checkpoint(trainer.settings.stage_dir)
                raise InputError(f"could not write the step-{state.step} checkpoint in {trainer.settings.stage_dir}: "
                                 f"{exc.strerror or exc}; " + (f"the last good checkpoint {kept} is kept (--resume continues "
                                 "from it)" if kept else "no earlier checkpoint exists")) from None
    distributed.barrier(world)


@contextmanager
def interrupt_flag() -> Iterator[dict[str, bool]]:
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


def _progress(trainer: Trainer) -> Progress:
    return Progress(TextColumn(f"[bold]{trainer.plan.kind}[/bold]"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                    disable=not (trainer.settings.progress and trainer.world.is_main), transient=False,
                    console=Console(stderr=True))


def _row(trainer: Trainer, state: TrainState, loss: float, lr: float, metrics: dict[str, Any], grad_norm: float,
         step_tokens: int, seconds: float, evaluation: Evaluation | None) -> MetricsRow:
    """The step's metrics row, with the warnings its watches raise."""
    eval_values = {f"eval_{key}": value for key, value in evaluation.metrics.items()} if evaluation else {}
    row = MetricsRow(step=state.step, loss=loss, lr=lr, tokens=state.tokens_seen, grad_norm=grad_norm,
                     tokens_per_s=step_tokens / seconds if seconds else None,
                     eval_loss=evaluation.loss if evaluation else None,
                     eval_perplexity=math.exp(min(evaluation.metrics["lm_loss"], 50.0))
                     if evaluation and "lm_loss" in evaluation.metrics else None,
                     values={**metrics, **eval_values})
    warnings = [warning for watch in trainer.parts.watches for warning in watch.update(state.step, row)]
    return replace(row, warnings=tuple(warnings))


def _all_agree_to_stop(trainer: Trainer, asked: bool) -> bool:
    """Ctrl-C on any process stops every process at the same step (one all-reduce), so none waits in a collective."""
    if not trainer.world.distributed:
        return asked
    return distributed.sums([1.0 if asked else 0.0], trainer.world, trainer.settings.device)[0] > 0


def _stop_reason(trainer: Trainer) -> str | None:
    """Why a watch ends the stage now (DPO's `stop_on_collapse`), if one does."""
    return next((watch.stop_reason for watch in trainer.parts.watches
                 if isinstance(watch, StoppingWatch) and watch.stop_reason is not None), None)


def _due(step: int, every: int, total: int, stopping: bool = False) -> bool:
    return bool(every) and (step % every == 0 or step == total or stopping)


def train_stage(plan: StagePlan, parts: StageParts, model: MiniMindForCausalLM, graph: nx.DiGraph, settings: LoopSettings,
                precision: PrecisionRuntime) -> StageResult:
    """Train `model` as `plan` says with `parts` (resuming when `settings.resume`)."""
    trainer = set_up(plan, parts, model, graph, settings, precision)
    state, resumed_from = restore(trainer)
    log = MetricsLog(settings.stage_dir / METRICS_FILE, enabled=trainer.world.is_main)
    log.keep_until(state.step)
    bad, last_loss, evaluation, stopping, stopped_by = 0, None, None, False, None
    evaluates = trainer.world.is_main or trainer.sharded  # sharded, every rank takes part in the forward's gathers
    model.train()
    with interrupt_flag() as interrupt, _progress(trainer) as progress, log:
        task = progress.add_task("train", total=trainer.total_steps, completed=state.step, status="")
        while state.step < trainer.total_steps and not stopping and stopped_by is None:
            started, lr = time.perf_counter(), lr_at(plan, state.step, trainer.total_steps)
            rows, state = next_rows(parts.data.train_rows, state, plan.batch_size, state.seed)  # the run's own order
            loss, metrics, tokens, norm = train_step(trainer, rows, lr)
            state = replace(state, step=state.step + 1)
            if norm is None:  # a non-finite loss: the step is skipped
                bad, state = bad + 1, replace(state, skipped_steps=state.skipped_steps + 1)
                if bad >= settings.max_bad_steps:
                    raise TrainingStopped(f"{bad} non-finite losses in a row at step {state.step}; the last good "
                                          f"checkpoint is {latest_checkpoint(settings.stage_dir)}")
                continue
            stopping = _all_agree_to_stop(trainer, interrupt["stop"])
            bad, last_loss, state = 0, loss, replace(state, tokens_seen=state.tokens_seen + tokens)
            fresh = evaluate(trainer, state.step) if evaluates and _due(state.step, settings.eval_every, trainer.total_steps) else None
            evaluation = fresh or evaluation
            row = _row(trainer, state, loss, lr, metrics, norm, tokens, time.perf_counter() - started, fresh)
            for warning in row.warnings if trainer.world.is_main else ():
                progress.console.print(f"[yellow]warning[/yellow]: {warning}")
            log.append(row)
            reason = _stop_reason(trainer)
            if _all_agree_to_stop(trainer, reason is not None):  # every process ends at the same step
                stopped_by = reason or "another process's watch stopped the stage"
                if trainer.world.is_main:
                    progress.console.print(f"[red]stopping the stage[/red] (stop_on_collapse): {stopped_by}")
            if settings.checkpoints and _due(state.step, settings.save_every, trainer.total_steps, stopping or bool(stopped_by)):
                save(trainer, state)
            progress.update(task, completed=state.step, status=f"loss {loss:.4f}  lr {lr:.2e}  {row.tokens_per_s or 0:,.0f} tok/s")
    final = latest_checkpoint(settings.stage_dir)
    if settings.checkpoints and (final is None or read_state(final).step != state.step):
        save(trainer, state)
    distributed.barrier(trainer.world)
    return StageResult(state.step, trainer.total_steps, last_loss, evaluation, state.skipped_steps, stopping, stopped_by,
                       resumed_from, latest_checkpoint(settings.stage_dir) or settings.stage_dir)


def trainable_count(model: nn.Module) -> int:
    """Parameters that require grad, each tensor once (a tied head is the embedding)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
