"""Run a training plan: for each stage, build (or reuse) its token cache, compile the model,
load the previous stage's weights (or `--init`), set the stage's trainable roles, and hand
everything to the loop. Each stage writes `RUN_DIR/<stage>/` (checkpoints, metrics.jsonl) and
its result to `RUN_DIR/<stage>/final/` (model.safetensors, config.json, the tokenizer), which
the next stage starts from. Pretraining and SFT train the causal-LM objective, distillation adds
a frozen teacher (`--teacher`), DPO a frozen reference (see `preference`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from ...config import ResolvedSpec, flat_values, value_changes
from ...errors import InputError
from ...graph import ParamRole, build_graph
from ...plan import StagePlan, TrainingPlan
from ..compile import compile_graph
from ..data.packing import sample_layout
from ..data.token_cache import build_token_cache
from ..data.tokenizer import CONFIG_FILE as TOKENIZER_CONFIG_FILE
from ..data.tokenizer import TOKENIZER_FILE, load_tokenizer
from ..export import load_model, load_weights_into, read_model_config
from ..lora_io import write_adapter
from ..model_dir import find_model
from ..trainability import set_trainable
from ..writer import CONFIG_FILE as MODEL_CONFIG_FILE
from ..writer import model_config_dict
from . import distributed
from .checkpoint import CheckpointError, latest_checkpoint, write_json_atomic
from .loop import LoopConfig, StageResult, run_stage
from .report import plot_loss, write_tensorboard
from .distillation import DistillationRunner, frozen_teacher
from .monitors import ExpertLoadWatch
from .preference import PreferenceRunner, frozen_copy, has_trained_adapters, precompute_reference
from .stages import language_model_runner

RUNNABLE = ("pretrain", "sft", "distill", "dpo")
ADAPTER_DIR = "adapter"  # in a LoRA stage's final/: the adapters in PEFT's layout
RESOLVED_FILE = "resolved.json"  # in each stage directory: the resolved values it was trained with
_stderr = Console(stderr=True)


@dataclass(frozen=True)
class RunOptions:
    out: Path
    tokenizer: Path
    seed: int = 0
    device: str = "auto"
    cache_dir: Path | None = None  # default: RUN_DIR/cache
    pack: bool = True
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
    teacher: Path | None = None  # the distillation teacher's trained model (a run, stage, checkpoint or model directory)
    precompute_ref: bool = False  # DPO: reference log-probs computed once before training (no reference in memory)


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolved_values(resolved: ResolvedSpec) -> dict[str, object]:
    """Every resolved model and training value under a dotted key (`model.n_layers`)."""
    return flat_values({"model": resolved.model, "training": resolved.training})


def spec_hash(resolved: ResolvedSpec) -> str:
    """Hash of everything resolved about the model and training (what a resume must agree on)."""
    return hashlib.sha256(json.dumps(resolved_values(resolved), sort_keys=True).encode()).hexdigest()


def _check_resume(stage_dir: Path, resolved: ResolvedSpec, options: RunOptions) -> None:
    """Before a stage resumes: refuse (or, with --force, warn) when its resolved values changed,
    listing each change; then record this run's values in `stage_dir/resolved.json` and the
    model's `config.json`, so a checkpoint directory is also a model directory."""
    record = stage_dir / RESOLVED_FILE
    values = resolved_values(resolved)
    if record.is_file() and latest_checkpoint(stage_dir) is not None:
        if not options.resume:
            return  # the loop refuses to overwrite the run; nothing is written here
        changes = value_changes(json.loads(record.read_text()), values)
        if changes and not options.force:
            shown = "\n  ".join(changes[:20]) + (f"\n  ... and {len(changes) - 20} more" if len(changes) > 20 else "")
            raise CheckpointError(f"{stage_dir} was trained from another spec; {len(changes)} resolved values changed:\n"
                                  f"  {shown}\n--force resumes anyway")
        for change in changes:
            _stderr.print(f"[yellow]warning[/yellow]: resuming with a changed value (--force): {escape(change)}")
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(record, values)
    write_json_atomic(stage_dir / MODEL_CONFIG_FILE, model_config_dict(resolved))


def _write_final(stage_dir: Path, weights: dict[str, torch.Tensor], resolved: ResolvedSpec, tokenizer_path: Path) -> Path:
    from safetensors.torch import save_file

    final = stage_dir / "final"
    staging = stage_dir / ".final.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(staging / "model.safetensors"))
    config = model_config_dict(resolved)
    config["minimind_spec"]["weights"] = "model.safetensors"
    (staging / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
        source = tokenizer_path.parent / name
        if source.is_file():
            shutil.copy(source, staging / name)
    if resolved.model.lora is not None:  # the adapters alone, in PEFT's layout, beside the full weights
        write_adapter(weights, resolved, staging / ADAPTER_DIR)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    return final


def run_plan(resolved: ResolvedSpec, plan: TrainingPlan, options: RunOptions, init: Path | None = None) -> list[StageResult]:
    """Train every stage of `plan` in order; raises InputError for a blocked or not-yet-runnable stage."""
    for stage in plan.stages:
        if stage.blocked is not None:
            raise InputError(f"stage {stage.kind!r} is blocked: {stage.blocked} ({stage.unblock})")
        if stage.kind not in RUNNABLE:
            raise InputError(f"stage {stage.kind!r} is planned but cannot run in this version; "
                             f"run the others with --stage {' --stage '.join(s.kind for s in plan.stages if s.kind in RUNNABLE)}")
    tokenizer = load_tokenizer(options.tokenizer)
    if tokenizer.vocab_size != resolved.model.vocab_size:
        raise InputError(f"the spec's vocab is {resolved.model.vocab_size:,} but the tokenizer has {tokenizer.vocab_size:,} ids")
    if options.deterministic:
        torch.use_deterministic_algorithms(True)
    world, device = distributed.setup(pick_device(options.device))
    graph = build_graph(resolved)
    cache_dir = options.cache_dir or options.out / "cache"
    options.out.mkdir(parents=True, exist_ok=True)
    previous = init
    results = []
    try:
        for stage in plan.stages:
            results.append(_run_stage(resolved, graph, stage, options, device, cache_dir, tokenizer, previous, world))
            if results[-1].interrupted:
                break  # Ctrl-C: the stage saved a checkpoint; --resume continues it, then the later stages
            previous = options.out / stage.kind / "final"
        distributed.barrier(world)  # every rank done with its collectives before the group goes away
    finally:
        distributed.teardown()  # no barrier here: a rank that failed must not wait for the others
    return results


CACHE_KIND = {"pretrain": "pretrain", "sft": "conversation", "distill": "conversation", "dpo": "preference"}


def _runner(stage: StagePlan, resolved: ResolvedSpec, cache, model: torch.nn.Module, tokenizer, options: RunOptions,  # noqa: ANN001
            device: str):  # noqa: ANN202
    """The stage's runner: its rows and objective (and, for DPO and distillation, the frozen model)."""
    assert resolved.training is not None
    if stage.kind in ("pretrain", "sft"):
        return language_model_runner(stage.kind, cache, stage.seq_len, tokenizer.pad_id, stage.label_smoothing, options.pack)
    if stage.kind == "distill":
        distill = resolved.training.distill
        if distill.kind != "logit":
            raise InputError(f"{distill.kind} distillation is not supported; set techniques.distill.kind to \"logit\"")
        if options.teacher is None:
            raise InputError("distillation needs the teacher's trained model: --teacher RUN_DIR")
        teacher_files = find_model(options.teacher)
        teacher_config = read_model_config(teacher_files.config)
        if teacher_config.model.vocab_size != resolved.model.vocab_size:
            raise InputError(f"the teacher's vocab is {teacher_config.model.vocab_size:,} but the student's is "
                             f"{resolved.model.vocab_size:,}: teacher and student must share the tokenizer")
        if teacher_config.model.max_position_embeddings < stage.seq_len:
            raise InputError(f"the teacher takes at most {teacher_config.model.max_position_embeddings} positions; the "
                             f"stage's rows are {stage.seq_len} long (lower seq_len, or use a teacher with more positions)")
        teacher = frozen_teacher(load_model(teacher_files.config, teacher_files.weights, device=device), device)
        layout = sample_layout(cache, stage.seq_len, options.pack)
        return DistillationRunner(stage.kind, cache, layout, tokenizer.pad_id, stage.label_smoothing, teacher=teacher,
                                  temperature=distill.temperature, alpha=distill.alpha, divergence=distill.loss,
                                  reasoning_weight=distill.reasoning_token_weight if distill.reasoning_token_masking else None)
    dpo = resolved.training.dpo
    lora_only = set(stage.trainable_roles) == {str(ParamRole.LORA)}
    # disabling trained adapters (from an earlier LoRA stage) would not give the input model: precompute then
    mode = ("precomputed" if options.precompute_ref or (lora_only and has_trained_adapters(model))
            else "adapters" if lora_only else "copy")
    runner = PreferenceRunner(stage.kind, cache, tokenizer.pad_id, dpo.beta, dpo.loss, mode)  # type: ignore[arg-type]
    if mode == "copy":
        runner.reference = frozen_copy(model)
    elif mode == "precomputed":
        runner.reference_logps = precompute_reference(runner, model, device, stage.micro_batch,
                                                      torch.bfloat16 if resolved.model.dtype == "bfloat16" else None)
    return runner


def _run_stage(resolved: ResolvedSpec, graph, stage: StagePlan, options: RunOptions, device: str, cache_dir: Path,  # noqa: ANN001
               tokenizer, previous: Path | None, world: distributed.World) -> StageResult:  # noqa: ANN001
    assert stage.data is not None and resolved.training is not None
    kind = CACHE_KIND[stage.kind]

    def tokenized():  # noqa: ANN202
        return build_token_cache(stage.data, tokenizer, kind, cache_dir, max_length=None if kind == "pretrain" else stage.seq_len,
                                 skip_bad_lines=options.skip_bad_lines)

    if world.is_main:
        tokenized()  # rank 0 tokenizes; the others then find the finished cache
    distributed.barrier(world)
    cache = tokenized()
    model = compile_graph(graph, device=device, seed=options.seed)
    if previous is not None:
        source = find_model(previous)  # a base without LoRA starts the adapters fresh (B = 0: the base's outputs)
        load_weights_into(model, source.weights, fresh_adapters=read_model_config(source.config).model.lora is None)
    set_trainable(model, graph, {ParamRole(role) for role in stage.trainable_roles})
    runner = _runner(stage, resolved, cache, model, tokenizer, options, device)
    if resolved.model.moe is not None:
        runner.load_watch = ExpertLoadWatch()
    max_steps = stage.max_steps or max(1, math.ceil(stage.epochs * len(runner.train_rows) / stage.batch_size))
    autocast = torch.bfloat16 if resolved.model.dtype == "bfloat16" else None
    config = LoopConfig(
        run_dir=options.out / stage.kind, optim=replace(resolved.training.optim, warmup=stage.warmup, grad_clip=stage.grad_clip),
        max_steps=max_steps, batch_size=stage.batch_size, micro_batch=stage.micro_batch, seed=options.seed,
        spec_hash=spec_hash(resolved), device=device, autocast_dtype=autocast, eval_every=options.eval_every,
        save_every=options.save_every, keep=options.keep, progress=options.progress, fsdp=options.fsdp,
        compile=options.compile,
    )
    if world.is_main:
        _check_resume(options.out / stage.kind, resolved, options)
    distributed.barrier(world)
    result = run_stage(model, graph, runner, config, resume=options.resume, force=options.force)
    if world.is_main:
        plot_loss(options.out / stage.kind, f"{resolved.name}: {stage.kind}")
        write_tensorboard(options.out / stage.kind)
    sharded = options.fsdp and world.distributed
    if not result.interrupted and (world.is_main or sharded):
        weights, _ = distributed.full_state(model, None, sharded)  # sharded: every rank helps gather
        if world.is_main:
            _write_final(options.out / stage.kind, weights, resolved, tokenizer.path)
    distributed.barrier(world)
    return result
