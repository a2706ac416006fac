"""Run a training plan: the plan decides, this executes, stage after stage.

Before any work: every stage must be runnable, the tokenizer must fit the spec, and `--out`
must be this run's directory (a new one, or one holding a run of the same model; another
model's run or unrelated files are refused unless `--force`); a resumed stage must have been
trained with the same decisions (each change listed; `--force` resumes anyway). Then per stage:
its token cache (built once, by rank 0; skipped lines and truncations counted), the model
compiled from the graph with the previous stage's `final/` (or `--init`) loaded, its base
projections in NF4 where the plan says QLoRA (`engine/quantize.py`; saved dequantised), and the
plan's trainable roles set, its parts from the stage registry's factory, the loop, and its result in
`RUN_DIR/<stage>/final/` (model.safetensors, config.json, the tokenizer; under LoRA the adapters
in PEFT's layout), written whole or not at all. Each stage directory also records the plan it
ran (`plan.json`), every resolved value (`resolved.json`) and what the engine did
(`executed.json`: the precision, the reference form and the trainable count read from the live
objects, the learning rates applied).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import torch
from rich.console import Console
from rich.markup import escape

from builders.model import MiniMindForCausalLM

from ...config import ResolvedSpec, flat_values, value_changes, weight_values
from ...errors import InputError
from ...files import write_text_atomic
from ...graph import ParamRole
from ...metrics import METRICS_FILE, read_metrics
from ...model_files import FINAL, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, find_model, latest_checkpoint
from ...plan import ReferenceMode, StagePlan, TrainingPlan
from ...stages import STAGE_ORDER, RowLayout
from ...stages import stage as stage_definition
from ..compile import compile_graph
from ..data.token_cache import TokenCache, build_token_cache
from ..data.trainable_tokens import HISTORY_KEY, trained_stages
from ..data.tokenizer import ChatTokenizer, load_tokenizer
from ..export import load_weights_into, read_model_config
from ..lora_io import saved_module_tensors, write_adapter
from ..quantize import quantize_base, quantized_base
from ..model_io import staged_directory, write_tensors
from ..trainability import set_trainable
from ..writer import CONFIG_FILE, WEIGHTS_FILE, model_config_dict
from . import distributed
from .checkpoint import CheckpointError, resumable_checkpoint
from .loop import LoopSettings, StageResult, train_stage, trainable_count
from .precision import PrecisionRuntime
from .report import plot_loss, write_tensorboard
from .stages import StageInputs, build_stage

ADAPTER_DIR = "adapter"  # in a LoRA stage's final/: the adapters in PEFT's layout
RESOLVED_FILE = "resolved.json"  # every resolved model and training value of the run
PLAN_FILE = "plan.json"  # the stage's plan as it ran
EXECUTED_FILE = "executed.json"  # what the engine did, read from the live objects
RUN_FILE = "run.json"  # in RUN_DIR: the model the run trains (another model's --out is refused)
_stderr = Console(stderr=True)


@dataclass(frozen=True)
class RunOptions:
    """How to run (what to train is the plan's)."""

    out: Path
    tokenizer: Path
    seed: int = 0
    device: str = "cpu"
    cache_dir: Path | None = None  # default: RUN_DIR/cache
    skip_bad_lines: bool = False
    eval_every: int = 50
    save_every: int = 50
    keep: int = 3
    resume: bool = False
    force: bool = False
    deterministic: bool = False
    progress: bool = True
    fsdp: bool = False  # under torchrun: FSDP2 instead of DDP
    compile: bool = False  # torch.compile the model for training


def resolved_values(resolved: ResolvedSpec) -> dict[str, object]:
    """Every resolved model and training value under a dotted key (`model.n_layers`)."""
    return flat_values({"model": resolved.model, "training": resolved.training})


def stage_record(resolved: ResolvedSpec, stage: StagePlan, seed: int) -> dict[str, object]:
    """What a resumed stage must agree on: the model's weights-defining values, the stage's decisions, the seed (it
    orders the data) and the data file (its name and size here; its contents through the token cache's key)."""
    data = f"{stage.data.name} ({stage.data.stat().st_size:,} bytes)" if stage.data is not None and stage.data.is_file() else None
    return flat_values({"model": weight_values(resolved.model), "stage": stage.decisions(), "run": {"seed": seed, "data": data}})


def record_hash(record: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _say(message: str) -> None:
    _stderr.print(escape(message), soft_wrap=True, highlight=False)


def check_out_dir(out: Path, resolved: ResolvedSpec, force: bool) -> None:
    """`out` must be new, or hold a run of this same model; else refuse (unless --force)."""
    record = {"name": resolved.name, "variant": resolved.variant, "model": weight_values(resolved.model)}
    marker = out / RUN_FILE
    if marker.is_file():
        changes = value_changes(flat_values(json.loads(marker.read_text())), flat_values(record))
        if changes and not force:
            raise InputError(f"{out} holds a run of another model ({len(changes)} values differ, e.g. {changes[0]}): "
                             "choose another --out, or --force to train there anyway")
    elif out.is_dir():
        ours = {"cache", *STAGE_ORDER}  # a run directory written before run.json existed holds only these
        unrelated = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if unrelated and not force:
            raise InputError(f"{out} is not empty and holds no run ({', '.join(unrelated[:5])}"
                             f"{', ...' if len(unrelated) > 5 else ''}): choose a new --out, or --force to train there anyway")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, json.dumps(record, indent=2) + "\n")


def check_resume(stage_dir: Path, resolved: ResolvedSpec, stage: StagePlan, options: RunOptions) -> None:
    """Before any work: a stage with checkpoints is continued only with --resume, and only when it was
    trained with the same decisions (each change is listed; --force resumes anyway, warning per change)."""
    checkpoint = resumable_checkpoint(stage_dir, options.resume)
    plan_file = stage_dir / PLAN_FILE
    if not options.resume or not plan_file.is_file() or checkpoint is None:
        return
    saved = json.loads(plan_file.read_text())
    changes = value_changes(saved.get("record", {}), stage_record(resolved, stage, options.seed))
    if changes and not options.force:
        shown = "\n  ".join(changes[:20]) + (f"\n  ... and {len(changes) - 20} more" if len(changes) > 20 else "")
        raise CheckpointError(f"{stage_dir} was trained with other settings; {len(changes)} values changed:\n  {shown}\n"
                              "--force resumes anyway")
    for change in changes:
        _say(f"warning: resuming with a changed value (--force): {change}")


def _write_stage_records(stage_dir: Path, resolved: ResolvedSpec, plan: TrainingPlan, stage: StagePlan, seed: int) -> None:
    """config.json (so a checkpoint directory is also a model directory), resolved.json and plan.json."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stage_dir / CONFIG_FILE, json.dumps(model_config_dict(resolved), indent=2) + "\n")
    values = {**resolved_values(resolved), "model.attention_backend_used": stage.attention}  # what the forward runs
    write_text_atomic(stage_dir / RESOLVED_FILE, json.dumps(values, indent=2) + "\n")
    stage_json = next(s for s, p in zip(plan.to_json()["stages"], plan.stages) if p is stage)
    write_text_atomic(stage_dir / PLAN_FILE, json.dumps({"record": stage_record(resolved, stage, seed), "plan": stage_json},
                                                        indent=2, default=str) + "\n")


def _token_cache(stage: StagePlan, tokenizer: ChatTokenizer, options: RunOptions, world: distributed.World) -> TokenCache:
    """The stage's data tokenized once (rank 0 first; the others then find it), with its counts said."""
    data = stage.data
    assert data is not None  # a stage without data is blocked before the run starts
    records = stage_definition(stage.kind).records
    cache_dir = options.cache_dir or options.out / "cache"

    def tokenized() -> TokenCache:
        return build_token_cache(data, tokenizer, records, cache_dir,
                                 max_length=None if stage.rows == RowLayout.STREAM else stage.seq_len,  # a stream cuts no document
                                 skip_bad_lines=options.skip_bad_lines)

    if world.is_main:
        cache = tokenized()
        meta = cache.meta
        if meta.skipped_lines:
            lines = ", ".join(str(line) for line, _ in meta.skipped_lines[:8]) + (", ..." if len(meta.skipped_lines) > 8 else "")
            _say(f"{stage.kind} data: skipped {len(meta.skipped_lines)} malformed lines of {stage.data} (lines {lines}; "
                 f"line {meta.skipped_lines[0][0]}: {meta.skipped_lines[0][1]})")
        if meta.truncated:
            _say(f"{stage.kind} data: {meta.truncated} of {meta.samples} samples were longer than {stage.seq_len} tokens "
                 "and were cut to fit (raise seq_len to keep them whole)")
    distributed.barrier(world)
    return tokenized()


def _input_model(graph: nx.DiGraph, stage: StagePlan, previous: Path | None, options: RunOptions, device: str,
                 modules_to_save: tuple[str, ...] = ()) -> MiniMindForCausalLM:
    """The stage's model: compiled from the graph, the previous stage's (or --init's) weights loaded, the base in NF4
    when the plan says so (QLoRA), trainable roles set."""
    model = compile_graph(graph, device=device, seed=options.seed)
    if previous is not None:
        source = find_model(previous)  # a base without LoRA starts the adapters fresh (B = 0: the base's outputs)
        load_weights_into(model, source.weights, fresh_adapters=read_model_config(source.config).model.lora is None)
    if stage.base_quant is not None:
        quantize_base(model, graph, stage.base_quant.scheme)
    roles = {ParamRole(role) for role in stage.trainable_roles}
    set_trainable(model, graph, roles)
    if roles == {ParamRole.LORA} and modules_to_save:  # whole modules train beside the adapters
        names = [name for name, _ in model.named_parameters()]
        for name in saved_module_tensors(names, modules_to_save):
            model.get_parameter(name).requires_grad_(True)
    return model


def _write_final(stage_dir: Path, weights: dict[str, torch.Tensor], resolved: ResolvedSpec, tokenizer: ChatTokenizer,
                 history: tuple[str, ...]) -> Path:
    """The stage's finished model in `final/`, whole or not at all; `history`: the stages that made it, in order."""
    final = stage_dir / FINAL
    try:
        with staged_directory(final) as staging:
            write_tensors(weights, staging / WEIGHTS_FILE)
            config = model_config_dict(resolved)
            config["minimind_spec"]["weights"] = WEIGHTS_FILE
            config["minimind_spec"][HISTORY_KEY] = list(history)
            (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
            for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
                if (tokenizer.path.parent / name).is_file():
                    shutil.copy(tokenizer.path.parent / name, staging / name)
            if resolved.model.lora is not None:  # the adapters alone, in PEFT's layout, beside the full weights
                write_adapter(weights, resolved, staging / ADAPTER_DIR)
    except OSError as exc:
        kept = latest_checkpoint(stage_dir)
        raise InputError(f"could not write {final}: {exc.strerror or exc}; the stage's last checkpoint {kept} is kept "
                         "(`minimind-spec export` takes it)") from None
    return final


def _executed(stage: StagePlan, stage_dir: Path, result: StageResult, precision: PrecisionRuntime,
              reference: ReferenceMode | None, trainable: int) -> dict[str, Any]:
    """What the engine did, from the live objects and the learning rates the loop applied (metrics.jsonl: every
    step of the stage, across resumes). The warmup is the ramp the lrs show: its length once the peak was reached
    and left (a warmup of 0 or 1 step starts at the peak and shows as 1), None while the lr was still rising."""
    lrs = [row.lr for row in read_metrics(stage_dir / METRICS_FILE)]
    peak = max(lrs, default=0.0)
    reached = bool(lrs) and lrs.index(peak) < len(lrs) - 1
    return {"precision": str(precision.executed()), "reference": None if reference is None else str(reference),
            "trainable_params": trainable, "peak_lr": peak if lrs else None, "first_lr": lrs[0] if lrs else None,
            "warmup": round(peak / lrs[0]) if reached and lrs[0] > 0 else None, "steps": result.steps,
            "total_steps": result.total_steps, "micro_batch": stage.micro_batch, "grad_accumulation": stage.grad_accumulation,
            "resumed_from": result.resumed_from, "stopped_by": result.stopped_by}


def _run_stage(resolved: ResolvedSpec, graph: nx.DiGraph, plan: TrainingPlan, stage: StagePlan, options: RunOptions,
               device: str, tokenizer: ChatTokenizer, previous: Path | None, world: distributed.World) -> StageResult:
    stage_dir = options.out / stage.kind
    cache = _token_cache(stage, tokenizer, options, world)
    model = _input_model(graph, stage, previous, options, device,
                         resolved.model.lora.modules_to_save if resolved.model.lora is not None else ())
    trainable = trainable_count(model)
    precision = PrecisionRuntime(stage.precision, device)
    parts = build_stage(StageInputs(stage, model, cache, tokenizer.pad_id, device, precision, resolved.model.moe is not None,
                                    tokenizer))
    if world.is_main:
        _write_stage_records(stage_dir, resolved, plan, stage, options.seed)
        checkpoint = latest_checkpoint(stage_dir)
        if options.resume and checkpoint is not None:
            _say(f"resuming stage {stage.kind} from step {int(checkpoint.name.split('-')[1])} ({checkpoint})")
        for line in (parts.data.summary, *parts.notes):
            _say(f"{stage.kind}: {line}")
        quantized = quantized_base(model, graph)
        if quantized is not None:
            _say(f"{stage.kind}: base in NF4: {quantized.bytes / 2**20:,.2f} MiB for {quantized.params:,} weights of "
                 f"{quantized.matrices} projections ({quantized.ratio:.3f} x fp32), dequantised on the fly")
    distributed.barrier(world)
    settings = LoopSettings(stage_dir, device, options.seed, options.eval_every, options.save_every, options.keep,
                            compile=options.compile, fsdp=options.fsdp, progress=options.progress, resume=options.resume,
                            force=options.force,
                            decisions_hash=record_hash({**stage_record(resolved, stage, options.seed), "data": cache.directory.name}))
    result = train_stage(stage, parts, model, graph, settings, precision)
    sharded = options.fsdp and world.distributed
    if world.is_main:
        plot_loss(stage_dir, f"{resolved.name}: {stage.kind}")
        write_tensorboard(stage_dir)
        quantized = quantized_base(model, graph)
        executed = {**_executed(stage, stage_dir, result, precision, parts.reference, trainable),
                    "base_quant": dataclasses.asdict(quantized) if quantized is not None else None}
        write_text_atomic(stage_dir / EXECUTED_FILE, json.dumps(executed, indent=2) + "\n")
    if not result.interrupted and (world.is_main or sharded):
        weights, _ = distributed.full_state(model, None, sharded)  # sharded: every rank helps gather
        if world.is_main:
            before = (trained_stages(previous) or ()) if previous is not None else ()
            _write_final(stage_dir, weights, resolved, tokenizer, (*before, str(stage.kind)))
    distributed.barrier(world)
    return result


def run_plan(resolved: ResolvedSpec, graph: nx.DiGraph, plan: TrainingPlan, options: RunOptions,
             init: Path | None = None) -> list[StageResult]:
    """Train every stage of `plan` in order (the first from `init`, when given); raises InputError for a
    blocked stage, a tokenizer that does not fit, or an --out that holds something else."""
    for stage in plan.stages:
        if stage.blocked is not None:
            raise InputError(f"stage {stage.kind} is blocked: {stage.blocked} ({stage.unblock})")
    tokenizer = load_tokenizer(options.tokenizer)
    if tokenizer.vocab_size > resolved.model.vocab_size:  # smaller is padding: the plan warns
        raise InputError(f"the spec's vocab is {resolved.model.vocab_size:,} but the tokenizer has {tokenizer.vocab_size:,} ids")
    if options.deterministic:
        torch.use_deterministic_algorithms(True)
    world, device = distributed.setup(options.device)
    results: list[StageResult] = []
    try:
        if world.is_main:
            check_out_dir(options.out, resolved, options.force)
            for stage in plan.stages:
                check_resume(options.out / stage.kind, resolved, stage, options)
        distributed.barrier(world)
        previous = init
        for stage in plan.stages:
            results.append(_run_stage(resolved, graph, plan, stage, options, device, tokenizer, previous, world))
            if results[-1].interrupted:
                break  # Ctrl-C: the stage saved a checkpoint; --resume continues it, then the later stages
            previous = options.out / stage.kind / FINAL
        distributed.barrier(world)  # every rank done with its collectives before the group goes away
    finally:
        distributed.teardown()  # no barrier here: a rank that failed must not wait for the others
    return results
