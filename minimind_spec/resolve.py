"""Resolve a validated `Spec` into a `ResolvedSpec`: every value concrete, with provenance.

Provenance says where each value came from: the spec (`spec:/hyperparams/d_model`), a
documented default (`default`), a derivation (`derived: mlp_ratio x d_model`), or the
variant being built (`variant: MoE`). Variants are applied here: the base build is the
dense model; `variant="MoE"` makes every MLP a mixture of experts, and
`variant="Flash Attention"` selects the flash-attn2 backend. Training values (optim,
regularization, techniques) resolve the same way, and command-line overrides
(`TrainingOverrides`) win over the spec, recorded as `cli: --flag`. Each training stage's
schedule and batch resolve per stage (`training.stages.<stage>.<field>`): the command line,
else `techniques.<stage>`, else the global section when the spec sets it, else the stage's
recipe from the registry (`recipe: dpo lr (trl DPOConfig default)`), else the global default.
Defaults are read from the schema models and the registry, never repeated here as numbers.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from .config import (
    AttentionBackendName, DistillConfig, DPOConfig, LoRAConfig, ModelConfig, MoEConfig, OptimConfig, ResolvedSpec, RopeConfig,
    SFTConfig, StageSettings, TrainingConfig, TrainingOverrides, GRPOConfig, QuantConfig,
)
from .errors import Problem, SpecError, pointer
from .rewards import ExactMatch, Format, Length, Repetition, RewardRule
from .schema import PROJECTIONS, Spec, YarnRopeScaling
from .schema.training import GRPOReward
from .stages import STAGES, StageDefinition, StageKind
from .suggest import did_you_mean


class _Recorder:
    """Collects values and their provenance while the resolver walks the spec."""

    def __init__(self) -> None:
        self.provenance: dict[str, str] = {}

    def take(self, key: str, section: BaseModel, field: str, path: tuple[str, ...], fallback: Any = None,
             why: str | None = None, cli: tuple[str, Any] | None = None) -> Any:
        """The command line's value (`cli` = (flag, value or None)) if given, else the spec's value
        if the user set it, else `fallback` (derived, with `why`) or the field default."""
        if cli is not None and cli[1] is not None:
            self.provenance[key] = f"cli: {cli[0]}"
            return cli[1]
        if field in section.model_fields_set:
            self.provenance[key] = "spec:" + pointer(*path, field)
            return getattr(section, field)
        if why is not None:
            self.provenance[key] = f"derived: {why}"
            return fallback
        self.provenance[key] = "default"
        return getattr(section, field)

    def set(self, key: str, value: Any, how: str) -> Any:
        self.provenance[key] = how
        return value


def _trick_clause(spec: Spec, trick: str) -> str:
    """'tricks lists 'x'' or 'tricks does not list 'x'': the reason of a trick-derived value."""
    return f"tricks {'lists' if trick in spec.tricks else 'does not list'} {trick!r}"


def _yarn_default(field: str) -> float:
    return YarnRopeScaling.model_fields[field].default


def _choose_variant(spec: Spec, variant: str | None, record: _Recorder) -> str | None:
    """The variant to build: the one asked for, else the spec's build_variant; it must be offered."""
    where = pointer("backbone", "variants")
    if variant is None and spec.backbone.build_variant is not None:
        variant, where = spec.backbone.build_variant, pointer("backbone", "build_variant")
        record.set("variant", variant, "spec:" + where)
    if variant is not None and variant not in spec.backbone.variants:
        offered = ", ".join(repr(v) for v in spec.backbone.variants) or "none"
        source = str(spec.origin.path) if spec.origin is not None else None
        raise SpecError(Problem(where, f"variant {variant!r} is not offered by this spec (offered: {offered})"), source)
    return variant


def _resolve_rope(spec: Spec, record: _Recorder) -> RopeConfig:
    hyperparams = spec.hyperparams
    scaling = hyperparams.rope_scaling
    where = "spec:" + pointer("hyperparams", "rope_scaling")
    unused_yarn = (_yarn_default("beta_fast"), _yarn_default("beta_slow"), 1.0)  # read only by YaRN
    if scaling is None or scaling.type == "none":
        record.set("model.rope_scaling", "none", where if scaling is not None else "default")
        return RopeConfig("none", 1.0, hyperparams.seq_len, *unused_yarn)
    record.set("model.rope_scaling", scaling.type, where)
    if scaling.type != "yarn":
        return RopeConfig(scaling.type, scaling.factor, hyperparams.seq_len, *unused_yarn)
    original = scaling.original_max_position_embeddings or hyperparams.seq_len
    if scaling.original_max_position_embeddings is None:
        record.set("model.rope_scaling.original_max_position_embeddings", original, "derived: hyperparams.seq_len")
    attention_factor = scaling.attention_factor or (0.1 * math.log(scaling.factor) + 1.0)
    if scaling.attention_factor is None:
        record.set("model.rope_scaling.attention_factor", attention_factor, "derived: 0.1 ln(factor) + 1")
    return RopeConfig("yarn", scaling.factor, original, scaling.beta_fast, scaling.beta_slow, attention_factor)


def _resolve_moe(spec: Spec, variant: str | None, mlp_hidden: int, record: _Recorder) -> MoEConfig | None:
    if variant != "MoE":
        record.set("model.mlp", "dense", "default (base build; --variant MoE for experts)")
        return None
    record.set("model.mlp", "moe", "variant: MoE")
    moe, path = spec.moe, ("moe",)
    return MoEConfig(
        num_experts=record.take("model.moe.num_experts", moe, "num_experts", path),
        top_k=record.take("model.moe.top_k", moe, "top_k", path),
        aux_loss=record.take("model.moe.aux_loss", moe, "aux_loss", path, "moe-aux-loss" in spec.tricks,
                             _trick_clause(spec, "moe-aux-loss")),
        aux_loss_weight=record.take("model.moe.aux_loss_weight", moe, "aux_loss_weight", path),
        num_shared_experts=record.take("model.moe.num_shared_experts", moe, "num_shared_experts", path),
        norm_topk_prob=record.take("model.moe.norm_topk_prob", moe, "norm_topk_prob", path, moe.norm_topk_prob and moe.top_k > 1,
                                   f"top_k {moe.top_k}" + (": one renormalised weight is always 1 and would give the router "
                                                           "no gradient" if moe.top_k == 1 else "")),
        expert_hidden=record.take("model.moe.expert_hidden", moe, "expert_hidden", path, mlp_hidden, "MLP hidden size"),
    )


CARD_LORA_TARGETS = ("q_proj", "v_proj")  # the card's LoRA recipe: target_modules=["q_proj","v_proj"]


def _resolve_lora(spec: Spec, record: _Recorder, cli: TrainingOverrides) -> LoRAConfig | None:
    lora, path = spec.techniques.lora, ("techniques", "lora")
    if not record.take("model.lora.enabled", lora, "enabled", path, cli=("--lora", cli.lora)):
        return None
    targets = record.take("model.lora.targets", lora, "placements", path, cli=("--lora-targets", cli.lora_targets))
    if not targets:
        targets = record.set("model.lora.targets", CARD_LORA_TARGETS,
                             "card recipe: target_modules q_proj, v_proj (no placements given)")
    unknown = [t for t in targets if t not in PROJECTIONS]
    if unknown:
        raise SpecError(Problem("/techniques/lora/placements", f"unknown LoRA target {unknown[0]!r}",
                                did_you_mean(unknown[0], PROJECTIONS, f"one of: {', '.join(PROJECTIONS)}")))
    return LoRAConfig(
        rank=record.take("model.lora.rank", lora, "rank", path, cli=("--lora-rank", cli.lora_rank)),
        alpha=record.take("model.lora.alpha", lora, "alpha", path, cli=("--lora-alpha", cli.lora_alpha)),
        dropout=record.take("model.lora.dropout", lora, "dropout", path),
        targets=tuple(dict.fromkeys(targets)),
        trainable_tokens=_trainable_tokens(lora.trainable_tokens, record, cli),
        modules_to_save=tuple(record.take("model.lora.modules_to_save", lora, "modules_to_save", path)),
    )


def _trainable_tokens(entries: list[int | str] | str, record: _Recorder, cli: TrainingOverrides) -> tuple[int, ...]:
    """The ids `train` made concrete with its tokenizer; without one, the spec's ids (its strings and 'auto' need it)."""
    key = "model.lora.trainable_tokens"
    if cli.trainable_tokens is not None:
        return record.set(key, tuple(cli.trainable_tokens), cli.trainable_tokens_why)
    if entries == "auto":
        return record.set(key, (), "default: auto (decided with the tokenizer and the start model when training; none here)")
    ids = tuple(dict.fromkeys(e for e in entries if isinstance(e, int)))
    strings = [e for e in entries if isinstance(e, str)]
    note = f" (tokens {', '.join(strings)} are placed with the tokenizer when training)" if strings else ""
    return record.set(key, ids, "spec:/techniques/lora/trainable_tokens" + note)


def _resolve_backend(spec: Spec, variant: str | None, record: _Recorder) -> AttentionBackendName:
    backbone = spec.backbone
    if variant == "Flash Attention":
        return record.set("model.attention_backend", "flash-attn2", "variant: Flash Attention")
    if "attention_backend" in backbone.model_fields_set and backbone.attention_backend != "auto":
        return record.set("model.attention_backend", backbone.attention_backend, "spec:" + pointer("backbone", "attention_backend"))
    if "flash-attn2" in spec.tricks:
        return record.set("model.attention_backend", "flash-attn2", "derived: tricks lists 'flash-attn2' (sdpa where it cannot run)")
    return record.set("model.attention_backend", "sdpa", "default (auto: PyTorch SDPA)")


def _resolve_model(spec: Spec, variant: str | None, record: _Recorder, cli: TrainingOverrides) -> ModelConfig:
    hyperparams, hpath = spec.hyperparams, ("hyperparams",)
    backbone, bpath = spec.backbone, ("backbone",)
    for key in ("vocab", "d_model", "n_layers", "n_heads", "seq_len", "dropout", "sd_prob"):
        record.take(f"model.{key}", hyperparams, key, hpath)
    record.provenance["model.vocab_size"] = record.provenance.pop("model.vocab")
    n_kv_heads = record.take("model.n_kv_heads", hyperparams, "n_kv_heads", hpath, hyperparams.n_heads,
                             "n_heads (multi-head attention)")
    head_dim = record.take("model.head_dim", hyperparams, "head_dim", hpath, hyperparams.attention_head_dim, "d_model / n_heads")
    qk_norm = record.take("model.qk_norm", hyperparams, "qk_norm", hpath)
    mlp_hidden = hyperparams.mlp_width
    assert mlp_hidden is not None, "the rules require mlp_ratio or mlp_hidden"
    if hyperparams.mlp_hidden is not None:
        record.take("model.mlp_hidden", hyperparams, "mlp_hidden", hpath)
    else:
        record.set("model.mlp_hidden", mlp_hidden, "derived: mlp_ratio x d_model")
    rope = _resolve_rope(spec, record)
    max_positions = record.take("model.max_position_embeddings", hyperparams, "max_position_embeddings", hpath,
                                round(hyperparams.seq_len * rope.factor), "seq_len x RoPE scaling factor")
    return ModelConfig(
        vocab_size=hyperparams.vocab, d_model=hyperparams.d_model, n_layers=hyperparams.n_layers, n_heads=hyperparams.n_heads,
        n_kv_heads=n_kv_heads, head_dim=head_dim, qk_norm=qk_norm, mlp_hidden=mlp_hidden,
        activation=record.take("model.activation", backbone, "activation", bpath),
        norm=record.take("model.norm", backbone, "norm", bpath),
        norm_eps=record.take("model.norm_eps", hyperparams, "norm_eps", hpath),
        positional_encoding=record.take("model.positional_encoding", backbone, "positional_encoding", bpath),
        rope_theta=record.take("model.rope_theta", hyperparams, "rope_theta", hpath),
        rope_scaling=rope, max_position_embeddings=max_positions, seq_len=hyperparams.seq_len,
        dropout=hyperparams.dropout, sd_prob=hyperparams.sd_prob,
        tie_word_embeddings=record.take("model.tie_word_embeddings", hyperparams, "tie_word_embeddings", hpath),
        attention_backend=_resolve_backend(spec, variant, record),
        moe=_resolve_moe(spec, variant, mlp_hidden, record),
        lora=_resolve_lora(spec, record, cli),
        dtype=record.take("model.dtype", hyperparams, "dtype", hpath, cli=("--bf16", "bfloat16" if cli.bf16 else None)),
    )


def _resolve_optim(spec: Spec, record: _Recorder, cli: TrainingOverrides) -> OptimConfig:
    optim, opath = spec.optim, ("optim",)
    reg, rpath = spec.regularization, ("regularization",)
    return OptimConfig(
        optimizer=record.take("training.optim.optimizer", optim, "optimizer", opath),
        lr=record.take("training.optim.lr", optim, "lr", opath, cli=("--lr", cli.lr)),
        betas=tuple(record.take("training.optim.betas", optim, "betas", opath)),
        weight_decay=record.take("training.optim.weight_decay", reg, "weight_decay", rpath,
                                 cli=("--weight-decay", cli.weight_decay)),
        scheduler=record.take("training.optim.scheduler", optim, "scheduler", opath),
        warmup=record.take("training.optim.warmup", optim, "warmup", opath, cli=("--warmup", cli.warmup)),
        min_lr_ratio=record.take("training.optim.min_lr_ratio", optim, "min_lr_ratio", opath),
        max_steps=record.take("training.optim.max_steps", optim, "max_steps", opath, cli=("--max-steps", cli.max_steps)),
        batch_size=record.take("training.optim.batch_size", optim, "batch_size", opath, cli=("--batch-size", cli.batch_size)),
        grad_clip=record.take("training.optim.grad_clip", reg, "grad_clip", rpath, cli=("--grad-clip", cli.grad_clip)),
        label_smoothing=record.take("training.optim.label_smoothing", reg, "label_smoothing", rpath,
                                    cli=("--label-smoothing", cli.label_smoothing)),
    )


# A stage field's global fallback: (spec section, its field); micro_batch and epochs have none.
_GLOBAL_FIELDS = {
    "lr": ("optim", "lr"), "min_lr_ratio": ("optim", "min_lr_ratio"), "warmup": ("optim", "warmup"),
    "batch_size": ("optim", "batch_size"), "max_steps": ("optim", "max_steps"), "seq_len": ("hyperparams", "seq_len"),
    "weight_decay": ("regularization", "weight_decay"), "grad_clip": ("regularization", "grad_clip"),
}
_STAGE_FLAGS = {"lr": "--lr", "warmup": "--warmup", "batch_size": "--batch-size", "micro_batch": "--micro-batch",
                "epochs": "--epochs", "max_steps": "--max-steps", "seq_len": "--seq-len", "weight_decay": "--weight-decay",
                "grad_clip": "--grad-clip"}
_STAGE_FIELDS = tuple(f for f in StageSettings.__dataclass_fields__)


def _stage_value(spec: Spec, definition: StageDefinition, name: str, record: _Recorder, cli: TrainingOverrides,
                 adapters: bool) -> Any:
    """One stage field: the command line, `techniques.<stage>`, the global section when the spec sets it,
    the stage's recipe, the global default (see the module docstring)."""
    kind = definition.kind.value
    key = f"training.stages.{kind}.{name}"
    section = getattr(spec.techniques, kind)
    flag = _STAGE_FLAGS.get(name)
    if flag is not None and getattr(cli, name) is not None:
        return record.set(key, getattr(cli, name), f"cli: {flag}")
    if name in section.model_fields_set and getattr(section, name) is not None:
        return record.set(key, getattr(section, name), "spec:" + pointer("techniques", kind, name))
    if name == "epochs":
        sft = spec.techniques.sft
        if definition.kind == StageKind.DISTILL and "epochs" in sft.model_fields_set:
            return record.set(key, sft.epochs, "derived: techniques.sft.epochs (the fine-tuning passes)")
        return record.set(key, sft.epochs if definition.kind == StageKind.SFT else 1, "default")
    if name == "micro_batch":
        return record.set(key, None, "default (each process's whole share of the batch in one forward)")
    global_section, global_field = _GLOBAL_FIELDS[name]
    section_model = getattr(spec, global_section)
    if global_field in section_model.model_fields_set and getattr(section_model, global_field) is not None:
        return record.set(key, getattr(section_model, global_field), "spec:" + pointer(global_section, global_field))
    recipe = definition.recipe.value(name, adapters)
    if recipe is not None:
        lora = ", LoRA" if recipe is definition.recipe.lora_lr and name == "lr" else ""
        return record.set(key, recipe.value, f"recipe: {kind} {name}{lora} ({recipe.anchor})")
    return record.set(key, getattr(section_model, global_field), "default")


def _resolve_stages(spec: Spec, record: _Recorder, cli: TrainingOverrides, max_positions: int,
                    lora: bool) -> dict[str, StageSettings]:
    stages: dict[str, StageSettings] = {}
    for definition in STAGES:
        adapters = lora and definition.adapter_mode
        settings = StageSettings(**{name: _stage_value(spec, definition, name, record, cli, adapters) for name in _STAGE_FIELDS})
        if settings.seq_len > max_positions:
            where = record.provenance[f"training.stages.{definition.kind}.seq_len"]
            raise SpecError(Problem(where.removeprefix("spec:") if where.startswith("spec:") else "",
                                    f"the {definition.kind} stage's seq_len {settings.seq_len} ({where}) exceeds the model's "
                                    f"{max_positions} positions", "lower it, or raise hyperparams.max_position_embeddings"))
        stages[definition.kind] = settings
    return stages


def _resolve_training(spec: Spec, record: _Recorder, cli: TrainingOverrides, model: ModelConfig) -> TrainingConfig:
    tech = spec.techniques
    sft, spath = tech.sft, ("techniques", "sft")
    dpo, dpath = tech.dpo, ("techniques", "dpo")
    distill, kpath = tech.distill, ("techniques", "distill")
    origin = spec.origin
    teacher_spec = origin.teacher_spec if origin is not None and distill.enabled else None
    if teacher_spec is None:
        how = "default (distillation off, or no teacher spec found)"
    elif distill.teacher_spec is not None:
        how = "spec:" + pointer(*kpath, "teacher_spec") + " (relative to the file that sets it)"
    else:
        how = f"derived: {distill.teacher}.json beside the spec that names the teacher"
    record.set("training.distill.teacher_spec", str(teacher_spec) if teacher_spec else None, how)
    return TrainingConfig(
        optim=_resolve_optim(spec, record, cli),
        stages=_resolve_stages(spec, record, cli, model.max_position_embeddings, model.lora is not None),
        document_mask=record.take("training.document_mask", tech.pretrain, "doc_mask", ("techniques", "pretrain"),
                                  cli=("--doc-mask", cli.document_mask)),
        sft=SFTConfig(
            enabled=record.take("training.sft.enabled", sft, "enabled", spath),
            datasets=tuple(record.take("training.sft.datasets", sft, "datasets", spath)),
        ),
        dpo=DPOConfig(
            enabled=record.take("training.dpo.enabled", dpo, "enabled", dpath),
            beta=record.take("training.dpo.beta", dpo, "beta", dpath, cli=("--dpo-beta", cli.dpo_beta)),
            reference_model=record.take("training.dpo.reference_model", dpo, "reference_model", dpath),
            pair_source=record.take("training.dpo.pair_source", dpo, "pair_source", dpath),
            loss=record.take("training.dpo.loss", dpo, "loss", dpath),
            rpo_alpha=record.take("training.dpo.rpo_alpha", dpo, "rpo_alpha", dpath),
            length_normalized=record.take("training.dpo.length_normalized", dpo, "length_normalized", dpath),
            stop_on_collapse=record.take("training.dpo.stop_on_collapse", dpo, "stop_on_collapse", dpath),
        ),
        distill=DistillConfig(
            enabled=record.take("training.distill.enabled", distill, "enabled", kpath),
            kind=record.take("training.distill.kind", distill, "type", kpath),
            teacher=record.take("training.distill.teacher", distill, "teacher", kpath),
            teacher_spec=teacher_spec,
            loss=record.take("training.distill.loss", distill, "loss", kpath),
            temperature=record.take("training.distill.temperature", distill, "temperature", kpath,
                                    cli=("--temperature", cli.temperature)),
            alpha=record.take("training.distill.alpha", distill, "alpha", kpath),
            layers=tuple(record.take("training.distill.layers", distill, "layers", kpath)),
            reasoning_token_masking=record.take(
                "training.distill.reasoning_token_masking", distill, "reasoning_token_masking", kpath,
                "reasoning-token-masking" in spec.tricks, _trick_clause(spec, "reasoning-token-masking")),
            reasoning_token_weight=record.take("training.distill.reasoning_token_weight", distill, "reasoning_token_weight", kpath),
        ),
        grpo=_resolve_grpo(spec, record),
        quant=_resolve_quant(spec, record, model),
    )


def _reward_rule(entry: GRPOReward) -> RewardRule:
    """A `techniques.grpo.rewards` entry as its typed rule, the rule's defaults where the entry is silent."""
    if entry.name == "exact_match":
        return ExactMatch(entry.weight, entry.pattern) if entry.pattern is not None else ExactMatch(entry.weight)
    if entry.name == "format":
        return Format(entry.weight) if entry.require_reasoning is None else Format(entry.weight, entry.require_reasoning)
    if entry.name == "length":
        return Length(entry.weight) if entry.target is None else Length(entry.weight, entry.target)
    return Repetition(entry.weight) if entry.n is None else Repetition(entry.weight, entry.n)


def _resolve_grpo(spec: Spec, record: _Recorder) -> GRPOConfig:
    grpo, path = spec.techniques.grpo, ("techniques", "grpo")
    values = {name: record.take(f"training.grpo.{name}", grpo, name, path)
              for name in ("enabled", "num_generations", "max_new_tokens", "temperature", "top_p", "top_k", "thinking", "beta",
                           "loss", "clip_eps", "cispo_max_weight", "std_eps")}
    rewards = tuple(_reward_rule(entry) for entry in record.take("training.grpo.rewards", grpo, "rewards", path))
    return GRPOConfig(**values, rewards=rewards)


def _resolve_quant(spec: Spec, record: _Recorder, model: ModelConfig) -> QuantConfig | None:
    """QLoRA's settings, or None when quantisation is off. The rules refuse schemes and places not
    implemented; here, after the command line's --lora, a quantised base without adapters is refused."""
    quant, path = spec.techniques.quant, ("techniques", "quant")
    if not record.take("training.quant.enabled", quant, "enabled", path):
        return None
    if model.lora is None:
        raise SpecError(Problem(pointer(*path, "enabled"), "quantises the frozen base for LoRA adapters (QLoRA), but LoRA is "
                                                         "off: nothing would train", "enable techniques.lora (or --lora)"))
    scheme = record.take("training.quant.scheme", quant, "scheme", path)
    where = tuple(record.take("training.quant.where", quant, "where", path))
    if scheme != "nf4" or any(place != "base" for place in where) or not where:  # the rules report these first
        raise SpecError(Problem(pointer(*path), f"scheme {scheme!r} where {list(where)}: only nf4 where ['base'] is implemented"))
    return QuantConfig(scheme="nf4", where=("base",))


# (field, flag, lowest allowed, whether the lowest itself is allowed, highest allowed (exclusive))
_OVERRIDE_BOUNDS = (
    ("lr", "--lr", 0.0, False, None), ("batch_size", "--batch-size", 1, True, None), ("max_steps", "--max-steps", 1, True, None),
    ("micro_batch", "--micro-batch", 1, True, None), ("seq_len", "--seq-len", 1, True, None),
    ("warmup", "--warmup", 0, True, None), ("weight_decay", "--weight-decay", 0.0, True, None),
    ("grad_clip", "--grad-clip", 0.0, False, None), ("label_smoothing", "--label-smoothing", 0.0, True, 1.0),
    ("epochs", "--epochs", 1, True, None), ("dpo_beta", "--dpo-beta", 0.0, False, None),
    ("temperature", "--temperature", 0.0, False, None), ("lora_rank", "--lora-rank", 1, True, None),
    ("lora_alpha", "--lora-alpha", 0.0, False, None),
)


def override_problems(cli: TrainingOverrides) -> list[Problem]:
    """Every command-line value outside the range the spec's own field allows (the schema's bounds)."""
    problems = []
    for field, flag, low, inclusive, high in _OVERRIDE_BOUNDS:
        value = getattr(cli, field)
        if value is None:
            continue
        if not math.isfinite(value):
            problems.append(Problem("", f"{flag} {value}: must be a finite number"))
            continue
        if value < low or (value == low and not inclusive) or (high is not None and value >= high):
            allowed = (f"at least {low}" if inclusive else f"above {low}") + (f" and below {high}" if high is not None else "")
            problems.append(Problem("", f"{flag} {value}: must be {allowed}"))
    return problems


def resolve(spec: Spec, variant: str | None = None, overrides: TrainingOverrides | None = None) -> ResolvedSpec:
    """Make every value of `spec` concrete, building the named variant (None: `backbone.build_variant`,
    else the base model), with command-line `overrides` (training values, LoRA, --bf16) winning over the spec's."""
    record = _Recorder()
    variant = _choose_variant(spec, variant, record)
    overrides = overrides or TrainingOverrides()
    problems = override_problems(overrides)
    if problems:
        raise SpecError(problems)
    model = _resolve_model(spec, variant, record, overrides)
    training = _resolve_training(spec, record, overrides, model)
    origin = spec.origin
    return ResolvedSpec(
        name=spec.model_name, variant=variant, model=model, spec=spec, training=training, provenance=record.provenance,
        warnings=origin.warnings if origin is not None else (),
    )
