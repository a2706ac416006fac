"""Cross-field rules: what no per-field type can express (divisibility, choices that
contradict each other, a teacher whose vocabulary differs from the student's).

The third step of loading: `loader.load_spec` runs them on the type-checked spec (or its
stand-in when some fields are broken) and hands in what it found out about the distillation
teacher, so the rules read no files. Returns (errors, warnings); each problem points at the
field a user would edit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import Problem, pointer, warning
from .schema import MAX_POSITIONS, PROJECTIONS, Spec
from .stages import STAGE_ORDER
from .suggest import did_you_mean


@dataclass(frozen=True)
class TeacherFacts:
    """What the loader found out about the distillation teacher's spec."""

    path: Path | None  # the file looked at (None: nothing found under the implied name)
    where: str  # JSON Pointer of the field that names the teacher
    vocab: int | None = None  # the teacher's vocabulary size, when its spec could be read
    problem: str | None = None  # why it could not be read


def rule_problems(spec: Spec, teacher: TeacherFacts | None = None) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) of every cross-field rule."""
    errors: list[Problem] = []
    warnings: list[Problem] = []
    for check in (_check_shapes, _check_moe, _check_lora, _check_training, _check_tricks, _check_misc):
        check(spec, errors, warnings)
    _check_distill(spec, teacher, errors, warnings)
    return errors, warnings


def _repeated(items: Iterable[str], where: str, what: str, warnings: list[Problem]) -> None:
    """The one "listed more than once" rule: a warning per repeated item."""
    for name, count in Counter(items).items():
        if count > 1:
            warnings.append(warning(where, f"{what} {name!r} is listed {count} times"))


def _check_heads(spec: Spec, errors: list[Problem]) -> None:
    hyperparams = spec.hyperparams
    if hyperparams.head_dim is None and hyperparams.d_model % hyperparams.n_heads:
        errors.append(Problem(pointer("hyperparams", "n_heads"), f"d_model {hyperparams.d_model} is not divisible by n_heads {hyperparams.n_heads}",
                              "set hyperparams.head_dim to give the heads their own width"))
    elif spec.backbone.positional_encoding == "RoPE" and hyperparams.attention_head_dim % 2:
        where = "head_dim" if hyperparams.head_dim is not None else "n_heads"
        what = "head_dim" if hyperparams.head_dim is not None else "head dimension d_model / n_heads"
        errors.append(Problem(pointer("hyperparams", where), f"{what} = {hyperparams.attention_head_dim} is odd; RoPE rotates pairs of dimensions"))
    if hyperparams.n_kv_heads is not None and hyperparams.n_heads % hyperparams.n_kv_heads:
        errors.append(Problem(pointer("hyperparams", "n_kv_heads"), f"n_heads {hyperparams.n_heads} is not divisible by n_kv_heads {hyperparams.n_kv_heads}"))


def _check_mlp(spec: Spec, errors: list[Problem], warnings: list[Problem]) -> None:
    hyperparams = spec.hyperparams
    if hyperparams.mlp_ratio is None:
        if hyperparams.mlp_hidden is None:
            errors.append(Problem(pointer("hyperparams", "mlp_ratio"), "neither mlp_ratio nor mlp_hidden is given: the MLP has no size",
                                  "set hyperparams.mlp_ratio (e.g. 3.0) or hyperparams.mlp_hidden (e.g. 1536)"))
        return
    hidden = hyperparams.mlp_ratio * hyperparams.d_model
    if hyperparams.mlp_hidden is not None:
        if round(hidden) != hyperparams.mlp_hidden:
            errors.append(Problem(pointer("hyperparams", "mlp_hidden"), f"is {hyperparams.mlp_hidden} but mlp_ratio x d_model = "
                                  f"{hyperparams.mlp_ratio:g} x {hyperparams.d_model} = {hidden:g}",
                                  "give one of the two, or make them agree"))
    elif round(hidden) < 1:
        errors.append(Problem(pointer("hyperparams", "mlp_ratio"), f"mlp_ratio x d_model = {hidden:g} leaves the MLP with no hidden units"))
    elif abs(hidden - round(hidden)) > 1e-6:
        warnings.append(warning(pointer("hyperparams", "mlp_ratio"), f"mlp_ratio x d_model = {hidden:g} is not a whole number; the MLP uses {round(hidden)}",
                                "hyperparams.mlp_hidden sets the size exactly"))


def _check_shapes(spec: Spec, errors: list[Problem], warnings: list[Problem]) -> None:
    hyperparams = spec.hyperparams
    _check_heads(spec, errors)
    _check_mlp(spec, errors, warnings)
    factor = hyperparams.rope_scaling.factor if hyperparams.rope_scaling is not None and hyperparams.rope_scaling.type != "none" else 1.0
    if hyperparams.max_position_embeddings is None and hyperparams.seq_len * factor > MAX_POSITIONS:
        errors.append(Problem(pointer("hyperparams", "rope_scaling", "factor"),
                              f"seq_len {hyperparams.seq_len} x factor {factor:g} exceeds {MAX_POSITIONS:,} positions"))
    if hyperparams.max_position_embeddings is not None and hyperparams.max_position_embeddings < hyperparams.seq_len:
        errors.append(Problem(pointer("hyperparams", "max_position_embeddings"), f"{hyperparams.max_position_embeddings} is shorter than seq_len {hyperparams.seq_len}"))
    scaling = hyperparams.rope_scaling
    if scaling is not None and scaling.type == "yarn" and scaling.beta_fast <= scaling.beta_slow:
        errors.append(Problem(pointer("hyperparams", "rope_scaling", "beta_fast"),
                              f"beta_fast {scaling.beta_fast:g} must be larger than beta_slow {scaling.beta_slow:g}",
                              "YaRN extrapolates dimensions above beta_fast rotations and interpolates below beta_slow"))
    if hyperparams.rope_scaling is not None and hyperparams.rope_scaling.type != "none" and spec.backbone.positional_encoding != "RoPE":
        errors.append(Problem(pointer("hyperparams", "rope_scaling"), f"RoPE scaling set but positional_encoding is {spec.backbone.positional_encoding!r}"))


def _check_moe(spec: Spec, errors: list[Problem], warnings: list[Problem]) -> None:
    moe = spec.moe
    if moe.top_k > moe.num_experts:
        errors.append(Problem(pointer("moe", "top_k"), f"top_k {moe.top_k} is larger than num_experts {moe.num_experts}"))
    if moe.top_k == 1 and moe.norm_topk_prob and "norm_topk_prob" in moe.model_fields_set:
        learns = ("it learns from the aux loss alone" if moe.aux_loss is not False and ("moe-aux-loss" in spec.tricks or moe.aux_loss)
                  else "with no aux loss it never learns")
        warnings.append(warning(pointer("moe", "norm_topk_prob"), "is true with top_k 1: the one renormalised weight is always 1, "
                                f"so the language-model loss gives the router no gradient: {learns} (MiniMind-3's MoE routes so)",
                                "set norm_topk_prob to false (the default for top_k 1) to let the loss train the router"))
    if "moe-aux-loss" in spec.tricks and moe.aux_loss is False:
        errors.append(Problem(pointer("moe", "aux_loss"), "is false but tricks lists 'moe-aux-loss'", "drop one of the two"))
    if "MoE" not in spec.backbone.variants and "moe" in spec.model_fields_set:
        warnings.append(warning(pointer("moe"), "MoE settings given but backbone.variants does not list 'MoE'; they are unused"))


def _check_lora(spec: Spec, errors: list[Problem], warnings: list[Problem]) -> None:
    lora = spec.techniques.lora
    narrowest = min(spec.hyperparams.d_model, spec.hyperparams.mlp_width or spec.hyperparams.d_model)
    if lora.enabled and lora.rank >= narrowest:
        warnings.append(warning(pointer("techniques", "lora", "rank"),
                                f"rank {lora.rank} is not below the narrowest projection width {narrowest}: the adapters are no longer low-rank"))
    base = pointer("techniques", "lora", "placements")
    for i, name in enumerate(lora.placements):
        if name not in PROJECTIONS:
            hint = did_you_mean(name, PROJECTIONS, f"projections in the graph: {', '.join(PROJECTIONS)}")
            errors.append(Problem(f"{base}/{i}", f"{name!r} names no projection in the graph", hint))
    _repeated(lora.placements, base, "placement", warnings)
    if lora.enabled and not lora.placements:
        errors.append(Problem(base, "LoRA is enabled but names no placements"))


def _check_training(spec: Spec, errors: list[Problem], warnings: list[Problem]) -> None:
    optim, tech = spec.optim, spec.techniques
    if optim.max_steps is not None and optim.warmup >= optim.max_steps:
        errors.append(Problem(pointer("optim", "warmup"), f"warmup {optim.warmup} steps is not shorter than the run (max_steps {optim.max_steps})"))
    if optim.scheduler == "constant" and optim.warmup:
        warnings.append(warning(pointer("optim", "warmup"), "warmup with a constant scheduler ramps up and then holds lr"))
    if tech.sft.enabled and not tech.sft.datasets:
        errors.append(Problem(pointer("techniques", "sft", "datasets"), "SFT is enabled but names no dataset"))
    if tech.adapters.enabled:
        if tech.adapters.bottleneck == 0:
            errors.append(Problem(pointer("techniques", "adapters", "bottleneck"), "adapters are enabled with bottleneck 0"))
        if not tech.adapters.placements:
            errors.append(Problem(pointer("techniques", "adapters", "placements"), "adapters are enabled but name no placements"))
    if tech.quant.enabled:
        _check_quant(spec, errors)
    hyperparams = spec.hyperparams
    scaling = hyperparams.rope_scaling
    factor = scaling.factor if scaling is not None and scaling.type != "none" else 1.0
    positions = hyperparams.max_position_embeddings or round(hyperparams.seq_len * factor)  # as resolve derives them
    for kind in STAGE_ORDER:  # a stage's own schedule and batch, checked like the global ones
        section = getattr(tech, kind)
        if section.max_steps is not None and section.warmup is not None and section.warmup >= section.max_steps:
            errors.append(Problem(pointer("techniques", kind, "warmup"), f"warmup {section.warmup} steps is not shorter than "
                                                                          f"the stage (max_steps {section.max_steps})"))
        if section.micro_batch is not None and section.batch_size is not None and section.batch_size % section.micro_batch:
            errors.append(Problem(pointer("techniques", kind, "micro_batch"), f"{section.micro_batch} does not divide the "
                                                                               f"stage's batch_size {section.batch_size}"))
        if section.seq_len is not None and section.seq_len > positions:
            errors.append(Problem(pointer("techniques", kind, "seq_len"), f"{section.seq_len} exceeds the model's {positions} "
                                                                           "positions", "raise hyperparams.max_position_embeddings, or lower it"))
    if tech.dpo.enabled and tech.dpo.beta > 10:
        warnings.append(warning(pointer("techniques", "dpo", "beta"), f"beta {tech.dpo.beta} is unusually large (typical 0.05-0.5)"))


QUANT_SCHEMES = ("nf4",)  # implemented (builders/nf4.py); the schema's other names are refused
QUANT_PLACES = ("base",)  # the frozen decoder projections; embeddings, norms and the head stay at full precision


def _check_quant(spec: Spec, errors: list[Problem]) -> None:
    """QLoRA: an enabled `techniques.quant` must name what is implemented (LoRA itself is checked by
    resolve, after the command line's --lora)."""
    quant = spec.techniques.quant
    if not quant.scheme:
        errors.append(Problem(pointer("techniques", "quant", "scheme"), "quantisation is enabled but the scheme is empty",
                              "nf4 (the only scheme implemented)"))
    elif quant.scheme not in QUANT_SCHEMES:
        errors.append(Problem(pointer("techniques", "quant", "scheme"), f"scheme {quant.scheme!r} is not implemented: only nf4 "
                              "(QLoRA: the frozen base in NF4 under LoRA adapters)", "nf4"))
    if not quant.where:
        errors.append(Problem(pointer("techniques", "quant", "where"), "quantisation is enabled but names nothing to quantise",
                              '["base"]: the frozen q/k/v/o/gate/up/down projections'))
    for i, place in enumerate(quant.where):
        if place not in QUANT_PLACES:
            errors.append(Problem(pointer("techniques", "quant", "where", i), f"{place!r} cannot be quantised: only 'base' (the "
                                  "frozen q/k/v/o/gate/up/down projections, experts included); embeddings, norms and the head "
                                  "stay at full precision, as in QLoRA", did_you_mean(place, QUANT_PLACES, 'where: ["base"]')))


def _check_tricks(spec: Spec, errors: list[Problem], warnings: list[Problem]) -> None:
    tricks = set(spec.tricks)
    _repeated(spec.tricks, pointer("tricks"), "trick", warnings)
    backend = spec.backbone.attention_backend
    if "flash-attn2" in tricks and backend in ("sdpa", "eager"):
        errors.append(Problem(pointer("backbone", "attention_backend"), f"is {backend!r} but tricks lists 'flash-attn2'", "drop one of the two"))
    if "Flash Attention" in spec.backbone.variants and backend in ("sdpa", "eager"):
        errors.append(Problem(pointer("backbone", "attention_backend"), f"is {backend!r} but variants lists 'Flash Attention'"))
    if "rope-scaling" in tricks and spec.hyperparams.rope_scaling is None:
        warnings.append(warning(pointer("tricks"), "lists 'rope-scaling' but hyperparams.rope_scaling is not set; RoPE stays unscaled",
                                "set hyperparams.rope_scaling to linear, ntk or yarn"))
    if "moe-aux-loss" in tricks and "MoE" not in spec.backbone.variants:
        warnings.append(warning(pointer("tricks"), "lists 'moe-aux-loss' but backbone.variants has no 'MoE'"))
    if "reasoning-token-masking" in tricks and spec.techniques.distill.reasoning_token_masking is False:
        errors.append(Problem(pointer("techniques", "distill", "reasoning_token_masking"), "is false but tricks lists 'reasoning-token-masking'"))


def _check_distill(spec: Spec, teacher: TeacherFacts | None, errors: list[Problem], warnings: list[Problem]) -> None:
    distill = spec.techniques.distill
    n_layers = spec.hyperparams.n_layers
    for i, layer in enumerate(distill.layers):
        if layer >= n_layers:
            errors.append(Problem(pointer("techniques", "distill", "layers", i), f"layer {layer} does not exist (the model has {n_layers})"))
    if not distill.enabled:
        return
    if distill.type == "hidden" and not distill.layers:
        errors.append(Problem(pointer("techniques", "distill", "layers"), "hidden-state distillation needs at least one layer"))
    if teacher is None:  # checked without a file system (a spec built in code)
        return
    if teacher.path is None:
        warnings.append(warning(teacher.where, f"no spec found for teacher {distill.teacher!r} (looked for {distill.teacher}.json "
                                               "beside the spec that names it); its vocab is not checked"))
    elif teacher.problem is not None:
        errors.append(Problem(teacher.where, f"teacher spec {teacher.path} {teacher.problem}"))
    elif teacher.vocab != spec.hyperparams.vocab:
        errors.append(Problem(teacher.where, f"teacher vocab {teacher.vocab} differs from the student's {spec.hyperparams.vocab}",
                              "logit distillation needs one shared vocabulary"))


def _check_misc(spec: Spec, errors: list[Problem], warnings: list[Problem]) -> None:
    _repeated((m.name for m in spec.modules), pointer("modules"), "module name", warnings)
    for i, point in enumerate(spec.concat_merge_points):
        if point.from_ == point.to:
            errors.append(Problem(pointer("concat_merge_points", i, "to"), f"merge point goes from {point.to!r} to itself"))
    total = spec.total_params
    if total.all is not None and total.trainable is not None and total.frozen is not None and \
            total.trainable + total.frozen != total.all:
        warnings.append(warning(pointer("total_params"), f"declared trainable {total.trainable:,} + frozen {total.frozen:,} != all {total.all:,}"))
    _repeated(spec.backbone.variants, pointer("backbone", "variants"), "variant", warnings)
    build_variant = spec.backbone.build_variant
    if build_variant is not None and build_variant not in spec.backbone.variants:
        offered = ", ".join(repr(v) for v in spec.backbone.variants) or "none"
        errors.append(Problem(pointer("backbone", "build_variant"), f"{build_variant!r} is not one of backbone.variants (offered: {offered})",
                              f"add {build_variant!r} to backbone.variants, or drop build_variant"))
