"""Resolve a validated `Spec` into a `ResolvedSpec`: every value concrete, with provenance.

Provenance says where each value came from: the spec (`spec:/hyperparams/d_model`), a
documented default (`default`), a derivation (`derived: mlp_ratio x d_model`), or the
variant being built (`variant: MoE`). Variants are applied here: the base build is the
dense model; `variant="MoE"` makes every MLP a mixture of experts, and
`variant="Flash Attention"` selects the flash-attn2 backend.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from .errors import Problem, SpecError, pointer
from .resolved import LoRAConfig, ModelConfig, MoEConfig, ResolvedSpec, RopeConfig
from .schema import Spec
from .semantic import teacher_spec_path


class _Recorder:
    """Collects values and their provenance while the resolver walks the spec."""

    def __init__(self) -> None:
        self.provenance: dict[str, str] = {}

    def take(self, key: str, section: BaseModel, field: str, path: tuple[str, ...], fallback: Any = None,
             why: str | None = None) -> Any:
        """The spec's value if the user set it, else `fallback` (derived, with `why`) or the field default."""
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


def _resolve_rope(spec: Spec, rec: _Recorder) -> RopeConfig:
    hp = spec.hyperparams
    scaling = hp.rope_scaling
    where = "spec:" + pointer("hyperparams", "rope_scaling")
    if scaling is None or scaling.type == "none":
        rec.set("model.rope_scaling", "none", where if scaling is not None else "default")
        return RopeConfig("none", 1.0, hp.seq_len, 32.0, 1.0, 1.0)
    rec.set("model.rope_scaling", scaling.type, where)
    if scaling.type == "yarn":
        original = scaling.original_max_position_embeddings or hp.seq_len
        if scaling.original_max_position_embeddings is None:
            rec.set("model.rope_scaling.original_max_position_embeddings", original, "derived: hyperparams.seq_len")
        attention_factor = scaling.attention_factor or (0.1 * math.log(scaling.factor) + 1.0)
        if scaling.attention_factor is None:
            rec.set("model.rope_scaling.attention_factor", attention_factor, "derived: 0.1 ln(factor) + 1")
        return RopeConfig("yarn", scaling.factor, original, scaling.beta_fast, scaling.beta_slow, attention_factor)
    return RopeConfig(scaling.type, scaling.factor, hp.seq_len, 32.0, 1.0, 1.0)


def _resolve_moe(spec: Spec, mlp_hidden: int, rec: _Recorder) -> MoEConfig:
    moe, path = spec.moe, ("moe",)
    aux = rec.take("model.moe.aux_loss", moe, "aux_loss", path, "moe-aux-loss" in spec.tricks,
                   "tricks lists 'moe-aux-loss'" if "moe-aux-loss" in spec.tricks else "tricks does not list 'moe-aux-loss'")
    return MoEConfig(
        num_experts=rec.take("model.moe.num_experts", moe, "num_experts", path),
        top_k=rec.take("model.moe.top_k", moe, "top_k", path),
        aux_loss=aux,
        aux_loss_weight=rec.take("model.moe.aux_loss_weight", moe, "aux_loss_weight", path),
        num_shared_experts=rec.take("model.moe.num_shared_experts", moe, "num_shared_experts", path),
        norm_topk_prob=rec.take("model.moe.norm_topk_prob", moe, "norm_topk_prob", path),
        expert_hidden=rec.take("model.moe.expert_hidden", moe, "expert_hidden", path, mlp_hidden, "MLP hidden size"),
    )


def _resolve_backend(spec: Spec, variant: str | None, rec: _Recorder) -> str:
    backbone = spec.backbone
    if variant == "Flash Attention":
        return rec.set("model.attention_backend", "flash-attn2", "variant: Flash Attention")
    if "attention_backend" in backbone.model_fields_set and backbone.attention_backend != "auto":
        return rec.set("model.attention_backend", backbone.attention_backend, "spec:" + pointer("backbone", "attention_backend"))
    if "flash-attn2" in spec.tricks:
        return rec.set("model.attention_backend", "flash-attn2", "derived: tricks lists 'flash-attn2' (sdpa where it cannot run)")
    return rec.set("model.attention_backend", "sdpa", "default (auto: PyTorch SDPA)")


def resolve(spec: Spec, variant: str | None = None) -> ResolvedSpec:
    """Make every value of `spec` concrete, building the named variant (None: `backbone.build_variant`, else the base model)."""
    rec = _Recorder()
    where = pointer("backbone", "variants")
    if variant is None and spec.backbone.build_variant is not None:
        variant, where = spec.backbone.build_variant, pointer("backbone", "build_variant")
        rec.set("variant", variant, "spec:" + where)
    if variant is not None and variant not in spec.backbone.variants:
        offered = ", ".join(repr(v) for v in spec.backbone.variants) or "none"
        source = str(spec.origin.path) if spec.origin is not None else None
        raise SpecError(Problem(where, f"variant {variant!r} is not offered by this spec (offered: {offered})"), source)
    hp, hpath = spec.hyperparams, ("hyperparams",)
    for key in ("vocab", "d_model", "n_layers", "n_heads", "seq_len", "dropout", "sd_prob"):
        rec.take(f"model.{key}", hp, key, hpath)
    rec.provenance["model.vocab_size"] = rec.provenance.pop("model.vocab")
    n_kv_heads = rec.take("model.n_kv_heads", hp, "n_kv_heads", hpath, hp.n_heads, "n_heads (multi-head attention)")
    head_dim = rec.set("model.head_dim", hp.d_model // hp.n_heads, "derived: d_model / n_heads")
    mlp_hidden = rec.set("model.mlp_hidden", round(hp.mlp_ratio * hp.d_model), "derived: mlp_ratio x d_model")
    rope = _resolve_rope(spec, rec)
    max_pos = rec.take("model.max_position_embeddings", hp, "max_position_embeddings", hpath,
                       round(hp.seq_len * rope.factor), "seq_len x RoPE scaling factor")

    moe = None
    if variant == "MoE":
        moe = _resolve_moe(spec, mlp_hidden, rec)
        rec.set("model.mlp", "moe", "variant: MoE")
    else:
        rec.set("model.mlp", "dense", "default (base build; --variant MoE for experts)")

    lora_spec = spec.techniques.lora
    lora = None
    if lora_spec.enabled:
        lpath = ("techniques", "lora")
        lora = LoRAConfig(
            rank=rec.take("model.lora.rank", lora_spec, "rank", lpath),
            alpha=rec.take("model.lora.alpha", lora_spec, "alpha", lpath),
            dropout=rec.take("model.lora.dropout", lora_spec, "dropout", lpath),
            targets=tuple(dict.fromkeys(rec.take("model.lora.targets", lora_spec, "placements", lpath))),
        )

    backbone, bpath = spec.backbone, ("backbone",)
    model = ModelConfig(
        vocab_size=hp.vocab, d_model=hp.d_model, n_layers=hp.n_layers, n_heads=hp.n_heads, n_kv_heads=n_kv_heads,
        head_dim=head_dim, mlp_hidden=mlp_hidden,
        activation=rec.take("model.activation", backbone, "activation", bpath),
        norm=rec.take("model.norm", backbone, "norm", bpath),
        norm_eps=rec.take("model.norm_eps", hp, "norm_eps", hpath),
        positional_encoding=rec.take("model.positional_encoding", backbone, "positional_encoding", bpath),
        rope_theta=rec.take("model.rope_theta", hp, "rope_theta", hpath),
        rope_scaling=rope, max_position_embeddings=max_pos, seq_len=hp.seq_len,
        dropout=hp.dropout, sd_prob=hp.sd_prob,
        tie_word_embeddings=rec.take("model.tie_word_embeddings", hp, "tie_word_embeddings", hpath),
        attention_backend=_resolve_backend(spec, variant, rec),  # type: ignore[arg-type]
        moe=moe, lora=lora,
        label_smoothing=rec.take("model.label_smoothing", spec.regularization, "label_smoothing", ("regularization",)),
        dtype=rec.take("model.dtype", hp, "dtype", hpath),
        static_kv_cache=rec.set("model.static_kv_cache", "kv-cache-pinning" in spec.tricks,
                                "derived: tricks " + ("lists" if "kv-cache-pinning" in spec.tricks else "does not list") + " 'kv-cache-pinning'"),
    )

    distill = spec.techniques.distill
    masking = rec.take("training.reasoning_token_masking", distill, "reasoning_token_masking", ("techniques", "distill"),
                       "reasoning-token-masking" in spec.tricks, "tricks " + ("lists" if "reasoning-token-masking" in spec.tricks else "does not list") + " 'reasoning-token-masking'")
    teacher_path, _ = teacher_spec_path(spec) if distill.enabled else (None, False)
    warnings = tuple(spec.origin.warnings) if spec.origin is not None else ()
    return ResolvedSpec(
        name=spec.model_name, variant=variant, model=model, spec=spec, reasoning_token_masking=masking,
        teacher_spec=teacher_path, provenance=rec.provenance, warnings=warnings,
    )
