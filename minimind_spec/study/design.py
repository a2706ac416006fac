"""The study's design: which specs are trained, in which stages, and which claims each tests.

For each ablation spec: load it and the base as documents (`extends` merged), apply the task's
`scale` patch to both (a scale value never replaces one the ablation itself changes: that
would erase the ablation), and write the two specs actually trained. The base is built as the
ablation's variant when the ablation selects one (`diff` pairs specs the same way), so the MoE
ablation is compared with the MoE base.

What the ablation changes decides its family (LoRA, norm, positional encoding, MoE, reasoning-
token masking, DPO), the stage its claims are measured after, and the first stage whose
training it changes: stages before that one are shared with the base arm (trained once, the
ablation starts from the base's weights). Each family knows the card's claims for its kind of
change and the metric that tests each one, with the direction the claim predicts.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ResolvedSpec, flat_values, value_changes
from ..diff import diff_specs
from ..errors import InputError
from ..loader import load_document, load_spec, merge_patch
from ..plan import PlanInputs, build_plan
from ..resolve import resolve
from ..stages import STAGE_ORDER, STAGES, StageKind
from .task import Task


NAME = re.compile(r"[A-Za-z0-9_.-]+")  # an ablation's name names its spec file and run directories
RESERVED = ("base", "teacher")


@dataclass(frozen=True)
class Claim:
    """One checkable part of the card's expected effect."""

    text: str  # the part of the card's sentence, in short
    metric: str  # the metric key that tests it
    expected: int  # +1: the ablation's value is predicted higher than the base's; -1: lower
    reading: str = ""  # how an ambiguous sentence was read


@dataclass(frozen=True)
class Family:
    """A kind of change: the stage after which it is measured and what is measured."""

    name: str
    measured_after: str  # the stage whose final model is measured
    metrics: tuple[str, ...]  # everything measured for this family (the claims' metrics and context)


FAMILIES = {
    "lora": Family("lora", "sft", ("trainable_share", "answer_loss", "exact_match", "step_seconds")),
    "norm": Family("norm", "pretrain", ("loss_spikes", "grad_norm_variance", "loss_1x", "loss_2x", "norm_saved_bytes_per_token")),
    "positional": Family("positional", "pretrain", ("loss_1x", "loss_2x", "loss_4x")),
    "moe": Family("moe", "pretrain", ("expert_load_cv", "mixed_loss", "loss_1x")),
    "distill": Family("distill", "distill", ("exact_match", "think_step_accuracy", "general_loss", "answer_loss")),
    "dpo": Family("dpo", "dpo", ("preference_accuracy", "logratio_margin", "kl_to_reference", "divergence_warnings",
                                 "exact_match")),
    "other": Family("other", "pretrain", ("loss_1x", "step_seconds")),
}


def family_of(changed_keys: list[str]) -> str:
    """The family of an ablation from the resolved values it changes (the first that matches)."""
    tests = (("moe", lambda k: k.startswith("model.moe")), ("lora", lambda k: k.startswith("model.lora")),
             ("norm", lambda k: k in ("model.norm", "model.norm_eps")),
             ("positional", lambda k: k.startswith(("model.positional_encoding", "model.rope"))),
             ("distill", lambda k: k.startswith("training.distill")), ("dpo", lambda k: k.startswith("training.dpo")))
    for name, test in tests:
        if any(test(k) for k in changed_keys):
            return name
    return "other"


def _first_stage_of(key: str) -> int:
    """The index (in the registry's order) of the first stage a changed resolved value reaches."""
    if key.startswith("model.lora"):  # the adapters train in the adapter-mode stages only
        return next(i for i, d in enumerate(STAGES) if d.adapter_mode)
    for i, definition in enumerate(STAGES):
        if key.startswith((f"training.stages.{definition.kind}.", f"training.{definition.kind}.")):
            return i
    return 0  # the model itself, the global optimizer, pretraining's row layout: every stage


def first_changed_stage(changed_keys: list[str]) -> str:
    """The first stage whose training an ablation changes; the stages before it are the base's."""
    return str(STAGE_ORDER[min((_first_stage_of(k) for k in changed_keys), default=0)])


def claims_for(family: str, base: ResolvedSpec, ablation: ResolvedSpec) -> tuple[Claim, ...]:
    """The card's claims for this kind of change, pointed the way this ablation changes it."""
    if family == "lora":
        old, new = (base.model.lora.rank if base.model.lora else 0), (ablation.model.lora.rank if ablation.model.lora else 0)
        if old == new:
            return ()  # alpha, dropout or placements: the card's claims are about the rank
        down = -1 if new < old else 1
        return (Claim(f"{'fewer' if down < 0 else 'more'} trainable parameters", "trainable_share", down),
                Claim(f"{'a drop' if down < 0 else 'a gain'} in adaptation quality: held-out answer loss after the LoRA stage",
                      "answer_loss", -down),
                Claim(f"{'a drop' if down < 0 else 'a gain'} in adaptation quality: held-out exact match", "exact_match", down),
                Claim(f"{'faster' if down < 0 else 'slower'} training (seconds per optimizer step)", "step_seconds", down))
    if family == "norm":
        if base.model.norm == ablation.model.norm:
            return ()  # norm_eps only
        layer = 1 if ablation.model.norm == "LayerNorm" else -1
        return (Claim("instability: loss spikes during pretraining", "loss_spikes", layer),
                Claim("instability: variance of the gradient norm over the second half", "grad_norm_variance", layer),
                Claim("instability in long sequences: held-out loss at positions seq_len..2 x seq_len", "loss_2x", layer),
                Claim("more memory for the norm statistics (bytes saved for backward by the norm layers, per token)",
                      "norm_saved_bytes_per_token", layer))
    if family == "positional":
        if base.model.positional_encoding == ablation.model.positional_encoding:
            return ()  # RoPE settings: the card's claims are about absolute positions
        absolute = 1 if ablation.model.positional_encoding == "Absolute" else -1
        return (Claim("worse extrapolation: held-out loss at positions seq_len..2 x seq_len", "loss_2x", absolute),
                Claim("worse extrapolation: held-out loss at positions 2..4 x seq_len", "loss_4x", absolute))
    if family == "moe":
        aux = [m.moe.aux_loss if m.moe is not None else None for m in (base.model, ablation.model)]
        if aux[0] == aux[1]:
            return ()
        off = 1 if ablation.model.moe is not None and not ablation.model.moe.aux_loss else -1
        return (Claim("imbalanced expert usage: per-layer expert-load CV on held-out text", "expert_load_cv", off),
                Claim("degraded performance on diverse inputs: held-out loss on the mixed-domain set (arithmetic stories and general text)", "mixed_loss", off))
    if family == "distill":
        assert base.training is not None and ablation.training is not None
        if base.training.distill.reasoning_token_masking == ablation.training.distill.reasoning_token_masking:
            return ()
        off = 1 if not ablation.training.distill.reasoning_token_masking else -1
        return (Claim("overfitting to general text", "general_loss", -off,
                      "read as: the student keeps more of the general text (lower held-out general-text loss) at the "
                      "cost of its reasoning; the distillation data hold no general text, so this measures what the "
                      "student keeps of it from pretraining"),
                Claim("reduced chain-of-thought coherence: arithmetically correct steps in the <think> span",
                      "think_step_accuracy", -off),
                Claim("reduced chain-of-thought coherence: held-out exact match of the final answer", "exact_match", -off))
    if family == "dpo":
        assert base.training is not None and ablation.training is not None
        if base.training.dpo.beta == ablation.training.dpo.beta:
            return ()
        up = 1 if ablation.training.dpo.beta > base.training.dpo.beta else -1
        return (Claim("stronger preference alignment: held-out preference accuracy", "preference_accuracy", up),
                Claim("stronger preference alignment: held-out log-ratio margin (chosen minus rejected, against the "
                      "reference)", "logratio_margin", up),
                Claim("reward hacking / divergence: KL to the reference on held-out responses", "kl_to_reference", up),
                Claim("divergence: warnings the DPO monitor raised while training", "divergence_warnings", up))
    return ()


@dataclass(frozen=True)
class Ablation:
    """One ablation of the study, paired with the base it is compared with."""

    name: str
    source: Path  # the ablation spec as given
    expected_effect: str
    spec: Path  # the spec trained (scaled)
    base_spec: Path  # the base spec trained (scaled)
    variant: str | None  # both sides are built as this variant
    family: Family
    claims: tuple[Claim, ...]
    first_stage: str
    changes: tuple[str, ...]  # resolved values that differ at the study's dimensions
    kept_from_ablation: tuple[str, ...]  # scale values the ablation keeps its own value for (it changes them)
    paper: tuple[str, ...]  # `diff` at the card's dimensions: parameter, FLOP and memory deltas

    @property
    def measured_after(self) -> str:
        """The family's stage, or the first stage the ablation changes when that comes later."""
        return max(self.family.measured_after, self.first_stage, key=STAGE_ORDER.index)

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this ablation trains itself (the earlier ones are the base's)."""
        return tuple(STAGE_ORDER[STAGE_ORDER.index(self.first_stage):STAGE_ORDER.index(self.measured_after) + 1])


def _leaves(value: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(value, dict) and value:
        out: dict[tuple[str, ...], Any] = {}
        for key, item in value.items():
            out |= _leaves(item, (*prefix, key))
        return out
    return {prefix: value}


def _without(patch: dict[str, Any], paths: set[tuple[str, ...]]) -> dict[str, Any]:
    """`patch` less the leaves at (or under) `paths`."""
    out: dict[str, Any] = {}
    for key, value in patch.items():
        if (key,) in paths:
            continue
        sub = {p[1:] for p in paths if p[:1] == (key,) and len(p) > 1}
        out[key] = _without(value, sub) if isinstance(value, dict) and sub else value
    return out


def scaled_documents(base: Path, ablation: Path, scale: dict[str, Any]) -> tuple[dict, dict, list[str]]:
    """(base document, ablation document, scale values the ablation keeps its own value for) with the
    task's scale applied: all of it to the base, to the ablation all but what the ablation changes."""
    base_doc, ablation_doc = load_document(base).data, load_document(ablation).data
    base_leaves, ablation_leaves = _leaves(base_doc), _leaves(ablation_doc)
    changed = {p for p in set(base_leaves) | set(ablation_leaves) if base_leaves.get(p) != ablation_leaves.get(p)}
    scale_paths = set(_leaves(scale))
    kept = {s for s in scale_paths if any(s[:len(c)] == c or c[:len(s)] == s for c in changed)}
    kept_patch = _without(scale, kept)
    return (merge_patch(base_doc, scale), merge_patch(ablation_doc, kept_patch),
            sorted("/" + "/".join(p) for p in kept))


def _write_spec(directory: Path, name: str, document: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    text = json.dumps(document, indent=2) + "\n"
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def _paper_lines(base: Path, ablation: Path) -> tuple[str, ...]:
    diff = diff_specs(base, ablation)
    lines = [f"{c.name}: {c.old:,} -> {c.new:,}{' ' + c.unit if c.unit else ''} ({c.percent:+.1f}%)" if c.percent is not None
             else f"{c.name}: {c.old:,} -> {c.new:,}" for c in diff.costs if c.delta]
    return tuple(lines or ["no parameter, FLOP or memory change (training-only setting)"]) + tuple(diff.notes)


def trainable_percent(resolved: ResolvedSpec, stage: str) -> float:
    """The share of parameters a stage trains, from the plan (no weights needed)."""
    plan = build_plan(resolved, PlanInputs(data={}, stages=(StageKind(stage),)))
    planned = next(s for s in plan.stages if s.kind == stage)
    return 100.0 * planned.trainable_params / planned.total_params


def resolved_spec(path: Path, variant: str | None) -> ResolvedSpec:
    """A spec file loaded, validated and resolved (as `variant`)."""
    return resolve(load_spec(path), variant)


def spec_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def teacher_spec(task: Task, out: Path) -> Path:
    """The task's teacher spec, `extends` merged, written to OUT/specs/teacher.json: the file the
    teacher is trained from, so its bytes (the run's key) change whenever any file it extends does."""
    return _write_spec(out / "specs", "teacher", load_document(task.teacher_spec).data)


def design_study(base: Path, ablations: list[Path], task: Task, out: Path) -> list[Ablation]:
    """Every ablation paired with its base, their scaled specs written under OUT/specs/.
    Raises SpecError (any spec unusable) or InputError (an ablation without an `ablation` block)."""
    teacher = teacher_spec(task, out)
    scale = merge_patch(task.scale, {"techniques": {"distill": {"teacher_spec": teacher.name}}})  # beside the students
    designed: list[Ablation] = []
    names: set[str] = set()
    for path in ablations:
        spec = load_spec(path)
        if spec.ablation is None:
            raise InputError(f"{path} has no \"ablation\" block (name and expected_effect): it is not an ablation spec")
        name = spec.ablation.name
        if not NAME.fullmatch(name) or name in RESERVED or name.startswith("base@"):
            raise InputError(f"{path}: ablation name {name!r}: letters, digits, '.', '_' and '-' only, and not "
                             f"{', '.join(RESERVED)} or base@VARIANT (the study's own arms)")
        if name in names:
            raise InputError(f"two ablation specs are named {name!r}")
        names.add(name)
        paper_variant = resolved_spec(path, None)
        variant = paper_variant.variant if "variant" in paper_variant.provenance else None
        base_doc, ablation_doc, kept = scaled_documents(base, path, scale)
        base_spec = _write_spec(out / "specs", f"base@{variant}" if variant else "base", base_doc)
        ablation_spec = _write_spec(out / "specs", name, ablation_doc)
        base_resolved, ablation_resolved = resolved_spec(base_spec, variant), resolved_spec(ablation_spec, variant)
        before = flat_values({"model": base_resolved.model, "training": base_resolved.training})
        after = flat_values({"model": ablation_resolved.model, "training": ablation_resolved.training})
        keys = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
        family = family_of(keys)
        paper = _paper_lines(base, path)
        if family == "lora":  # the share the card's sentence quotes, at the card's dimensions
            stage = FAMILIES[family].measured_after
            paper += (f"trainable share of the {stage} stage at the card's dimensions: "
                      f"{trainable_percent(resolved_spec(base, variant), stage):.2f}% -> "
                      f"{trainable_percent(paper_variant, stage):.2f}%",)
        designed.append(Ablation(
            name=name, source=Path(path), expected_effect=spec.ablation.expected_effect, spec=ablation_spec,
            base_spec=base_spec, variant=variant, family=FAMILIES[family],
            claims=claims_for(family, base_resolved, ablation_resolved), first_stage=first_changed_stage(keys),
            changes=tuple(value_changes(before, after)), kept_from_ablation=tuple(kept), paper=paper))
    return designed
