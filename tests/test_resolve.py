"""Resolver: concrete values, provenance for each, variants."""

from __future__ import annotations

import math

import pytest

from minimind_spec import SpecError, load_spec, resolve
from minimind_spec.config import TrainingOverrides

from .conftest import SPEC


@pytest.fixture(scope="module")
def card():
    return resolve(load_spec(SPEC))


def test_values_from_the_spec_name_their_json_path(card):
    assert card.model.d_model == 512
    assert card.provenance["model.d_model"] == "spec:/hyperparams/d_model"
    assert card.provenance["model.vocab_size"] == "spec:/hyperparams/vocab"
    assert card.provenance["model.lora.rank"] == "spec:/techniques/lora/rank"


def test_derived_values_say_from_what(card):
    assert card.model.mlp_hidden == 1536
    assert card.provenance["model.mlp_hidden"] == "derived: mlp_ratio x d_model"
    assert card.model.head_dim == 64
    assert card.model.n_kv_heads == 8 and card.provenance["model.n_kv_heads"].startswith("derived: n_heads")


def test_defaults_are_marked_default(card):
    assert card.model.rope_theta == 1e6 and card.provenance["model.rope_theta"] == "default"
    assert card.model.norm_eps == 1e-5 and card.provenance["model.norm_eps"] == "default"
    assert card.model.tie_word_embeddings is True and card.provenance["model.tie_word_embeddings"] == "default"


def test_tricks_drive_derived_switches(card):
    assert card.model.attention_backend == "flash-attn2"
    assert "flash-attn2" in card.provenance["model.attention_backend"]
    assert card.training.distill.reasoning_token_masking is True


def test_training_values_come_from_optim_regularization_and_techniques(card):
    optim = card.training.optim
    assert (optim.lr, optim.betas, optim.weight_decay, optim.warmup, optim.grad_clip) == (1e-4, (0.9, 0.95), 0.01, 100, 1.0)
    assert card.provenance["training.optim.weight_decay"] == "spec:/regularization/weight_decay"
    assert optim.min_lr_ratio == 0.1 and card.provenance["training.optim.min_lr_ratio"] == "default"
    assert optim.batch_size == 8 and card.provenance["training.optim.batch_size"] == "default"
    assert card.training.stages["sft"].epochs == 3 and card.training.sft.datasets == ("reasoning_data",)
    assert card.provenance["training.stages.sft.epochs"] == "spec:/techniques/sft/epochs"
    assert card.training.stages["distill"].epochs == 3  # distillation passes over the fine-tuning data as often
    assert card.training.dpo.beta == 0.1 and card.training.distill.temperature == 2.0
    assert card.training.distill.alpha == 0.5 and card.provenance["training.distill.alpha"] == "default"


def test_the_teacher_spec_says_where_it_was_found(card):
    assert card.training.distill.teacher_spec == SPEC.parent / "larger_model.json"
    assert card.provenance["training.distill.teacher_spec"] == "derived: larger_model.json beside the spec that names the teacher"


def test_command_line_overrides_win_and_say_so():
    overrides = TrainingOverrides(lr=3e-4, batch_size=16, max_steps=50, epochs=1, dpo_beta=0.5, grad_clip=0.5)
    resolved = resolve(load_spec(SPEC), overrides=overrides)
    optim = resolved.training.optim
    assert (optim.lr, optim.batch_size, optim.max_steps, optim.grad_clip) == (3e-4, 16, 50, 0.5)
    assert all(settings.epochs == 1 and settings.lr == 3e-4 for settings in resolved.training.stages.values())  # every stage
    assert resolved.training.dpo.beta == 0.5 and resolved.provenance["training.stages.dpo.lr"] == "cli: --lr"
    assert resolved.provenance["training.optim.lr"] == "cli: --lr"
    assert resolved.provenance["training.dpo.beta"] == "cli: --dpo-beta"
    assert resolved.provenance["training.optim.warmup"] == "spec:/optim/warmup"  # not overridden: the spec's


def test_base_build_is_dense(card):
    assert card.model.moe is None and card.variant is None


def test_moe_variant_switches_every_mlp(card):
    moe = resolve(card.spec, "MoE")
    assert moe.model.moe is not None
    assert moe.model.moe.num_experts == 8 and moe.model.moe.top_k == 2
    assert moe.model.moe.aux_loss is True
    assert moe.provenance["model.mlp"] == "variant: MoE"
    assert moe.provenance["model.moe.num_experts"] == "default"


def test_flash_variant_sets_the_backend(card):
    flash = resolve(card.spec, "Flash Attention")
    assert flash.provenance["model.attention_backend"] == "variant: Flash Attention"


def test_unknown_variant_is_a_spec_error(card):
    with pytest.raises(SpecError, match="not offered"):
        resolve(card.spec, "Mamba")


def test_yarn_attention_factor_is_derived(write_spec):
    spec = load_spec(write_spec(hyperparams={"rope_scaling": {"type": "yarn", "factor": 4.0}}))
    rope = resolve(spec).model.rope_scaling
    assert rope.kind == "yarn"
    assert rope.attention_factor == pytest.approx(0.1 * math.log(4.0) + 1.0)
    assert rope.original_max_position_embeddings == 32
    assert resolve(spec).model.max_position_embeddings == 128


def test_explicit_default_still_counts_as_spec(write_spec):
    spec = load_spec(write_spec(hyperparams={"rope_theta": 1_000_000.0}))
    assert resolve(spec).provenance["model.rope_theta"] == "spec:/hyperparams/rope_theta"
