"""`build_plan`: the spec's training as ordered stages, every decision made once, here.

Which stages run: the registry's order (`stages.STAGES`), each kind the spec enables (pretraining
unless `--init` supplies a base), or exactly the `--stage` kinds. For each stage, from the
resolved spec (its per-stage settings carry their provenance) and the command line:
- what trains: the whole base, or under LoRA the adapters of the post-training stages (with
  `techniques.quant`, QLoRA: those stages hold the frozen base's projections in NF4);
- the objective (the registry builds it from the training config) and the frozen model: the
  distillation teacher, or the DPO reference as a frozen copy, the policy with its untrained
  adapters disabled, or log-probs precomputed once (`--precompute-ref`, and whenever the input
  model's adapters may have been trained: disabling them would not give the input model); a
  stage that samples its sequences (GRPO) cannot precompute, so there a frozen copy;
- the precision the device can run the spec's dtype in (or why it cannot);
- the batch split over processes and micro-batches (a memory knob: the loss is summed and
  divided once by the step's count, so it changes nothing else);
- warnings worth reading before training, and why a stage is blocked, with what unblocks it.
No torch, no data read (data files are only looked at: exists, size).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

import networkx as nx

from ..config import ResolvedSpec, StageSettings, TrainingConfig
from ..errors import InputError, Problem, SpecError
from ..graph import BASE_ROLES, Costs, ParamRole, build_graph, graph_costs, params_with_roles
from ..graph.declared import lora_declared_problems
from ..model_files import find_model
from ..objectives import GRPOObjective, ObjectiveSettings
from ..stages import STAGES, FrozenModel, StageDefinition, StageKind, stage
from .estimates import base_quant, estimated_steps, flops_per_token, memory_estimate, sequences_per_row
from .model import BaseQuant, DeviceFacts, PlanInputs, Precision, ReferenceMode, StagePlan, TrainingPlan

NO_DECAY_ROLES = frozenset({ParamRole.NORM, ParamRole.EMBEDDING})


def enabled_stages(resolved: ResolvedSpec, inputs: PlanInputs) -> tuple[StageKind, ...]:
    """The stages to run, in the registry's order: `--stage` if given, else what the spec enables
    (pretraining unless --init gives a base model)."""
    assert resolved.training is not None
    if inputs.stages is not None:
        return tuple(d.kind for d in STAGES if d.kind in inputs.stages)
    training = resolved.training
    return tuple(d.kind for d in STAGES
                 if (inputs.init is None if d.switch is None else getattr(training, d.switch).enabled))


def attention_backend(requested: str, device: DeviceFacts, precision: Precision) -> tuple[str, str | None]:
    """(the attention backend a stage's forward runs, why it is not the one the spec asks for, or None)."""
    if requested != "flash-attn2":
        return requested, None
    if importlib.util.find_spec("flash_attn") is None:  # looks for the package without importing it (or torch)
        return "sdpa", "flash-attn2 is not installed here"
    if device.kind in ("cpu", "mps"):
        return "sdpa", f"flash-attn2 runs on CUDA GPUs only, and this run is on {device.kind}"
    if precision == Precision.FP32:
        return "sdpa", "flash-attn2 computes in bf16 or fp16, and this stage computes in fp32"
    return "flash-attn2", None


def decide_precision(dtype: str, device: DeviceFacts) -> tuple[Precision, str | None]:
    """(the precision the spec's dtype trains in on `device`, why it cannot, or None)."""
    if dtype == "float16":
        return Precision.FP16, None
    if dtype != "bfloat16":
        return Precision.FP32, None
    if device.kind == "cuda" and device.bf16 is False:
        return Precision.BF16, (f"this GPU ({device.name or 'cuda'}) has no bf16 arithmetic; set hyperparams.dtype to "
                                "float16 (fp16 autocast with a GradScaler) or float32")
    return Precision.BF16, None


@dataclass(frozen=True)
class _Context:
    resolved: ResolvedSpec
    graph: nx.DiGraph
    inputs: PlanInputs

    @property
    def lora(self) -> bool:
        return self.resolved.model.lora is not None

    @property
    def training(self) -> TrainingConfig:
        assert self.resolved.training is not None  # build_plan refuses a model without a training section
        return self.resolved.training


def _roles(context: _Context, definition: StageDefinition) -> frozenset[ParamRole]:
    return frozenset({ParamRole.LORA}) if context.lora and definition.adapter_mode else BASE_ROLES


def _base_quant(context: _Context, roles: frozenset[ParamRole]) -> BaseQuant | None:
    """QLoRA: the frozen base in NF4, in a stage that trains only the adapters (a stage training the base cannot)."""
    quant = context.training.quant
    return base_quant(context.graph, quant) if quant is not None and roles == {ParamRole.LORA} else None


def _quant_warnings(context: _Context, roles: frozenset[ParamRole]) -> tuple[str, ...]:
    if context.training.quant is None or roles == {ParamRole.LORA}:
        return ()
    return ("techniques.quant: this stage trains the base, so it stays at full precision here; only the stages that train "
            "the LoRA adapters alone hold it in NF4",)


def _reference_mode(context: _Context, definition: StageDefinition, earlier: list[StagePlan]) -> ReferenceMode | None:
    """The DPO reference's form: see the module docstring."""
    if definition.frozen != FrozenModel.REFERENCE:
        return None
    if context.inputs.precompute_ref and not definition.samples:
        return ReferenceMode.PRECOMPUTED
    if not (context.lora and definition.adapter_mode):
        return ReferenceMode.COPY
    trained_before = any(str(ParamRole.LORA) in plan.trainable_roles for plan in earlier)
    init_has_adapters = not earlier and context.inputs.init is not None and _init_has_adapters(context.inputs.init)
    if trained_before or init_has_adapters:  # sampled sequences (GRPO) cannot be precomputed: a frozen copy
        return ReferenceMode.COPY if definition.samples else ReferenceMode.PRECOMPUTED
    return ReferenceMode.ADAPTERS_OFF


def _init_has_adapters(init: Path) -> bool:
    """The --init model carries LoRA adapters (which an earlier run may have trained)."""
    try:
        return find_model(init).has_adapters()
    except InputError:  # nothing there: the run says so when it loads --init
        return False


def _teacher(context: _Context) -> tuple[int, str | None, str | None]:
    """(teacher parameters, blocked reason, unblock) of a distillation stage."""
    distill = context.training.distill
    if distill.teacher_spec is None:
        return 0, f"no spec found for teacher {distill.teacher!r}", "techniques.distill.teacher_spec"
    from ..loader import load_spec
    from ..resolve import resolve

    teacher_params = params_with_roles(build_graph(resolve(load_spec(distill.teacher_spec))), BASE_ROLES)
    if context.inputs.teacher is None:
        return teacher_params, "no teacher checkpoint", "--teacher RUN_DIR"
    return teacher_params, None, None


def _frozen(context: _Context, definition: StageDefinition, reference: ReferenceMode | None
            ) -> tuple[str | None, int, str | None, str | None]:
    """(description, frozen parameters held in memory, blocked reason, unblock)."""
    if definition.frozen == FrozenModel.TEACHER:
        params, blocked, unblock = _teacher(context)
        teacher = context.training.distill.teacher
        return f"teacher {teacher!r}" + (f" ({params:,} parameters)" if params else ""), params, blocked, unblock
    if reference == ReferenceMode.COPY:
        return ("reference: a frozen copy of the stage's input model", params_with_roles(context.graph, BASE_ROLES),
                None, None)
    if reference == ReferenceMode.ADAPTERS_OFF:
        return "reference: the stage's input model, its untrained adapters disabled (no second copy)", 0, None, None
    if reference == ReferenceMode.PRECOMPUTED:
        return "reference: the input model's log-probs, computed once before training (no second copy)", 0, None, None
    return None, 0, None, None


def _objective_blocked(objective: ObjectiveSettings, settings: StageSettings) -> tuple[str | None, str | None]:
    """(why the objective cannot run with the stage's settings, what fixes it): a GRPO completion needs room in seq_len."""
    if isinstance(objective, GRPOObjective) and objective.max_new_tokens >= settings.seq_len:
        return (f"max_new_tokens {objective.max_new_tokens} leaves no room for a prompt in the stage's seq_len {settings.seq_len} "
                "(prompt + completion)", "techniques.grpo.max_new_tokens, or techniques.grpo.seq_len")
    return None, None


def _blocked(context: _Context, definition: StageDefinition, frozen_blocked: tuple[str | None, str | None],
             precision_refused: str | None, upstream: str | None,
             objective_blocked: tuple[str | None, str | None] = (None, None)) -> tuple[str | None, str | None]:
    data = context.inputs.data.get(definition.kind)
    if data is None:
        return "no data", f"{definition.data_flag} FILE"
    if not data.is_file():
        return f"data file {data} not found", f"{definition.data_flag} FILE"
    if frozen_blocked[0] is not None:
        return frozen_blocked
    if precision_refused is not None:
        return precision_refused, "hyperparams.dtype"
    if objective_blocked[0] is not None:
        return objective_blocked
    if upstream is not None:
        return f"its input model comes from the blocked stage '{upstream}'", f"--init CKPT, or unblock '{upstream}'"
    return None, None


def _batch_split(settings: StageSettings, processes: int) -> tuple[int, int]:
    """(micro-batch, accumulation) of each process; the batch must divide over the processes."""
    if settings.batch_size % processes:
        raise SpecError(Problem("", f"the batch size {settings.batch_size} does not divide over {processes} processes",
                                "--batch-size N with N a multiple of the process count"))
    per_process = settings.batch_size // processes
    micro = min(settings.micro_batch or per_process, per_process)
    if per_process % micro:
        divisors = ", ".join(str(d) for d in range(1, per_process + 1) if per_process % d == 0)
        raise SpecError(Problem("", f"the micro-batch {micro} does not divide the {per_process} rows each process trains "
                                    "per step", f"pick a divisor: {divisors}"))
    return micro, per_process // micro


def _warnings(context: _Context, definition: StageDefinition, settings: StageSettings, provenance: dict[str, str],
              steps: int | None, first: bool) -> tuple[str, ...]:
    warnings = []
    if steps is not None and steps < settings.warmup:
        how = "" if settings.max_steps is not None else "about "
        warnings.append(f"the stage runs {how}{steps} steps but warms up over {settings.warmup}: its lr never reaches the "
                        f"peak {settings.lr:g} (it ends at {settings.lr * steps / settings.warmup:.3g})")
    ceiling = definition.recipe.lr_ceiling
    own = f"spec:/techniques/{definition.kind}/lr"
    if ceiling is not None and settings.lr > ceiling.value and provenance["lr"] != own:
        recipe = definition.recipe.value("lr", context.lora and definition.adapter_mode)
        advice = f"its recipe is {recipe.value:g} ({recipe.anchor}); " if recipe is not None else ""
        warnings.append(f"the {definition.kind} stage's lr {settings.lr:g} ({provenance['lr']}) is above {ceiling.value:g} "
                        f"({ceiling.anchor}): {advice}set techniques.{definition.kind}.lr to give the stage its own")
    if definition.samples and context.inputs.precompute_ref:
        warnings.append(f"--precompute-ref does not apply to the {definition.kind} stage: it samples its completions while "
                        "it trains, so its reference runs beside the policy")
    if first and context.inputs.init is None and definition.adapter_mode and context.lora:
        warnings.append("trains LoRA adapters on a randomly initialised base (no --init and no pretraining stage before "
                        "it): the frozen base knows nothing, so the adapters can learn little")
    return tuple(warnings)


def _stage(context: _Context, definition: StageDefinition, earlier: list[StagePlan], costs_by_roles: dict) -> StagePlan:
    resolved, inputs = context.resolved, context.inputs
    assert resolved.training is not None
    kind = definition.kind
    settings = resolved.training.stages[kind]
    provenance = {name: resolved.provenance[f"training.stages.{kind}.{name}"] for name in StageSettings.__dataclass_fields__}
    roles = _roles(context, definition)
    provenance["trainable_roles"] = (f"{resolved.provenance.get('model.lora.enabled', 'spec')} (adapter mode of post-training)"
                                     if roles == {ParamRole.LORA} else "default (the whole base model)")
    if roles == {ParamRole.LORA} and resolved.model.lora is not None:  # which token rows train beside the adapters, and why
        provenance["trainable_tokens"] = (f"{list(resolved.model.lora.trainable_tokens)}: "
                                          f"{resolved.provenance.get('model.lora.trainable_tokens', 'default')}")
    costs: Costs = costs_by_roles.setdefault(roles, graph_costs(context.graph, resolved.model, roles))
    quant = _base_quant(context, roles)
    if quant is not None:
        provenance["base_quant"] = resolved.provenance["training.quant.scheme"]
    micro, accumulation = _batch_split(settings, inputs.processes)
    reference = _reference_mode(context, definition, earlier)
    frozen, frozen_params, *frozen_blocked = _frozen(context, definition, reference)
    precision, refused = decide_precision(resolved.model.dtype, inputs.device)
    attention, attention_note = attention_backend(resolved.model.attention_backend, inputs.device, precision)
    upstream = next((p.kind for p in earlier if p.blocked is not None), None)
    objective = definition.objective(resolved.training)
    blocked, unblock = _blocked(context, definition, (frozen_blocked[0], frozen_blocked[1]), refused, upstream,
                                _objective_blocked(objective, settings))
    if blocked is None and quant is not None and inputs.fsdp and inputs.processes > 1:
        blocked, unblock = "QLoRA under FSDP is not supported (the NF4 base is not sharded)", "drop --fsdp (DDP runs it)"
    data = inputs.data.get(kind)
    group = objective.num_generations if isinstance(objective, GRPOObjective) else 1
    sequences = sequences_per_row(definition.rows, group)
    steps = estimated_steps(settings.max_steps, settings.epochs, data, settings.batch_size * sequences * settings.seq_len)
    tokens = steps * settings.batch_size * sequences * settings.seq_len if steps is not None else None
    frozen_forward = (costs.flops_per_token if reference == ReferenceMode.COPY
                      else 2 * frozen_params if definition.frozen == FrozenModel.TEACHER else 0)
    per_token = flops_per_token(context.graph, costs, bool(roles & BASE_ROLES), frozen_forward)
    optim = resolved.training.optim
    no_decay = params_with_roles(context.graph, roles & NO_DECAY_ROLES)
    return StagePlan(
        kind=kind, data=data, data_format=definition.data_format, rows=definition.rows, pack=inputs.pack,
        document_mask=resolved.training.document_mask and kind == StageKind.PRETRAIN,
        init_from=(str(inputs.init) if inputs.init is not None else "random init") if not earlier
        else f"the {earlier[-1].kind} stage's final model",
        trainable_roles=tuple(sorted(str(r) for r in roles if params_with_roles(context.graph, {r}))),
        trainable_params=costs.trainable_params, total_params=costs.total_params, active_params=costs.active_params_per_token,
        declared=tuple(f"{p.path}: {p.message}" for p in lora_declared_problems(resolved, costs.trainable_params, costs.total_params))
        if roles == {ParamRole.LORA} else (),
        base_quant=quant,
        objective=objective, count_unit=definition.count_unit, frozen_model=frozen,
        reference=reference, teacher=inputs.teacher if definition.frozen == FrozenModel.TEACHER else None,
        evaluation=definition.evaluation, optimizer=optim.optimizer, betas=optim.betas, weight_decay=settings.weight_decay,
        decay_params=costs.trainable_params - no_decay, no_decay_params=no_decay, lr=settings.lr, scheduler=optim.scheduler,
        warmup=settings.warmup, min_lr_ratio=settings.min_lr_ratio, grad_clip=settings.grad_clip, precision=precision,
        attention=attention, attention_note=attention_note,
        batch_size=settings.batch_size, micro_batch=micro, grad_accumulation=accumulation, processes=inputs.processes,
        seq_len=settings.seq_len, epochs=settings.epochs, max_steps=settings.max_steps, tokens=tokens,
        train_flops=tokens * per_token if tokens is not None else None,
        memory=memory_estimate(resolved.model, costs, optim.optimizer, micro, settings.seq_len, definition.rows,
                               frozen_params, inputs.processes if inputs.fsdp else 1, group, quant),
        wall_seconds=tokens / inputs.tokens_per_s if tokens is not None and inputs.tokens_per_s else None,
        tokens_per_s=inputs.tokens_per_s, throughput_source="cli: --tokens-per-s" if inputs.tokens_per_s else None,
        warnings=_warnings(context, definition, settings, provenance, steps, not earlier) + _quant_warnings(context, roles),
        blocked=blocked, unblock=unblock, provenance=provenance,
    )


def build_plan(resolved: ResolvedSpec, inputs: PlanInputs | None = None, graph: nx.DiGraph | None = None) -> TrainingPlan:
    """The ordered stages of training `resolved` (its graph built here unless given), with settings,
    provenance, warnings and estimates."""
    if resolved.training is None:
        raise SpecError(Problem("", "this model was rebuilt from an exported config.json; it has no training section",
                                "plan from the spec file"))
    inputs = inputs or PlanInputs()
    run_warnings = []
    if inputs.tokenizer_vocab is not None and inputs.tokenizer_vocab > resolved.model.vocab_size:
        raise SpecError(Problem("/hyperparams/vocab", f"the spec's vocab is {resolved.model.vocab_size:,} but the tokenizer has "
                                                      f"{inputs.tokenizer_vocab:,} ids: the model has no row for the rest",
                                "set hyperparams.vocab to the tokenizer's size (or more), or train a tokenizer with "
                                f"--vocab-size {resolved.model.vocab_size}"))
    if inputs.tokenizer_vocab is not None and inputs.tokenizer_vocab < resolved.model.vocab_size:
        run_warnings.append(padded_vocab_warning(resolved.model.vocab_size, inputs.tokenizer_vocab))
    context = _Context(resolved, graph if graph is not None else build_graph(resolved), inputs)
    costs: dict[frozenset[ParamRole], Costs] = {}
    plans: list[StagePlan] = []
    for kind in enabled_stages(resolved, inputs):
        plans.append(_stage(context, stage(kind), plans, costs))
    return TrainingPlan(resolved.name, resolved.variant, tuple(plans), inputs.tokens_per_s, inputs.device, inputs.processes,
                        inputs.fsdp, tuple(run_warnings))


def padded_vocab_warning(vocab: int, tokenizer_vocab: int) -> str:
    """The spec's vocabulary is larger than the tokenizer's: accepted, as Hugging Face models pad theirs."""
    return (f"the spec's vocab {vocab:,} is larger than the tokenizer's {tokenizer_vocab:,} ids: the embedding keeps "
            f"{vocab - tokenizer_vocab:,} rows no token uses (padding, as Hugging Face models often pad to a multiple of 64)")


def with_throughput(plan: TrainingPlan, rates: dict[StageKind, float], source: str) -> TrainingPlan:
    """`plan` with the measured tokens/s of some stages (a probe) and their wall-time estimates."""
    stages = tuple(
        replace(stage_plan, tokens_per_s=rates[stage_plan.kind], throughput_source=source,
                wall_seconds=stage_plan.tokens / rates[stage_plan.kind]
                if stage_plan.tokens is not None and rates[stage_plan.kind] > 0 else None)
        if stage_plan.kind in rates else stage_plan
        for stage_plan in plan.stages)
    return replace(plan, stages=stages)
