"""Each stage's own settings: `techniques.<stage>` beats the global sections, which beat the
stage's recipe default (MiniMind's and trl's rates, the card's SFT and DPO recipes), which beats
the global default; the command line beats them all for the stages it runs; every value says
where it came from. A global lr that reaches DPO above 1e-5 warns with both numbers. Front end
only: no torch."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from minimind_spec import SpecError, load_spec, resolve
from minimind_spec.cli import app
from minimind_spec.config import TrainingOverrides
from minimind_spec.plan import build_plan
from minimind_spec.stages import STAGE_ORDER, STAGES, StageKind, stage

from .conftest import SPEC, TINY


def _lrs(resolved):
    return {kind: (resolved.training.stages[kind].lr, resolved.provenance[f"training.stages.{kind}.lr"]) for kind in STAGE_ORDER}


def test_the_registry_defines_every_stage_kind_once_in_run_order():
    assert [d.kind for d in STAGES] == list(StageKind) == list(STAGE_ORDER)
    assert [d.data_flag for d in STAGES] == ["--pretrain-data", "--sft-data", "--distill-data", "--dpo-data", "--grpo-data"]
    assert [d.adapter_mode for d in STAGES] == [False, True, True, True, True]  # LoRA: the post-training stages train adapters
    assert stage("dpo").recipe.lr.value == 1e-6 and stage(StageKind.DPO).recipe.lora_lr.value == 5e-6


def test_where_the_spec_is_silent_each_stage_takes_its_recipe(write_spec):
    resolved = resolve(load_spec(write_spec(TINY)))
    assert _lrs(resolved) == {
        "pretrain": (5e-4, "recipe: pretrain lr (MiniMind train_pretrain.py)"),
        "sft": (1e-5, "recipe: sft lr (MiniMind train_full_sft.py)"),
        "distill": (5e-6, "recipe: distill lr (MiniMind train_distillation.py)"),
        "dpo": (1e-6, "recipe: dpo lr (trl DPOConfig default; MiniMind uses 4e-8)"),
        "grpo": (1e-6, "recipe: grpo lr (trl GRPOConfig default; MiniMind train_grpo.py uses 3e-7)"),
    }
    assert resolved.training.stages["sft"].batch_size == 8 and resolved.training.stages["sft"].warmup == 100
    assert resolved.training.stages["pretrain"].warmup == 0  # no recipe: the global default


def test_with_lora_the_adapter_stages_take_the_lora_recipe(write_spec):
    resolved = resolve(load_spec(write_spec(techniques={"lora": {"enabled": True, "placements": ["q_proj", "v_proj"]}})))
    lrs = _lrs(resolved)
    assert lrs["pretrain"][0] == 5e-4  # pretraining trains the base, LoRA or not
    assert lrs["sft"] == (1e-4, "recipe: sft lr, LoRA (the card's LoRA recipe, train_lora --lr 1e-4)")
    assert lrs["dpo"] == (5e-6, "recipe: dpo lr, LoRA (DPO with LoRA adapters)")
    assert lrs["grpo"] == (5e-6, "recipe: grpo lr, LoRA (GRPO with LoRA adapters, as Unsloth's GRPO recipes)")


def test_a_stage_section_beats_the_global_section_which_beats_the_recipe(write_spec):
    spec = write_spec(optim={"lr": 3e-3, "warmup": 10, "batch_size": 16},
                      techniques={"dpo": {"lr": 5e-7, "batch_size": 4, "micro_batch": 2, "max_steps": 50, "seq_len": 16,
                                          "weight_decay": 0.0, "grad_clip": 0.5, "min_lr_ratio": 0.0, "epochs": 2},
                                  "pretrain": {"warmup": 3}})
    resolved = resolve(load_spec(spec))
    dpo, pretrain, sft = (resolved.training.stages[k] for k in ("dpo", "pretrain", "sft"))
    assert (dpo.lr, dpo.batch_size, dpo.micro_batch, dpo.max_steps, dpo.seq_len) == (5e-7, 4, 2, 50, 16)
    assert (dpo.weight_decay, dpo.grad_clip, dpo.min_lr_ratio, dpo.epochs) == (0.0, 0.5, 0.0, 2)
    assert resolved.provenance["training.stages.dpo.lr"] == "spec:/techniques/dpo/lr"
    assert (pretrain.lr, pretrain.warmup, pretrain.batch_size) == (3e-3, 3, 16)
    assert resolved.provenance["training.stages.pretrain.warmup"] == "spec:/techniques/pretrain/warmup"
    assert resolved.provenance["training.stages.pretrain.lr"] == "spec:/optim/lr"
    assert (sft.lr, sft.warmup, sft.batch_size, sft.seq_len) == (3e-3, 10, 16, 32)  # the global values


def test_the_command_line_beats_every_stage_section(write_spec):
    spec = write_spec(techniques={"dpo": {"lr": 5e-7}})
    resolved = resolve(load_spec(spec), overrides=TrainingOverrides(lr=2e-3, seq_len=16, micro_batch=2))
    assert all(resolved.training.stages[k].lr == 2e-3 for k in STAGE_ORDER)
    assert resolved.provenance["training.stages.dpo.lr"] == "cli: --lr"
    assert resolved.training.stages["sft"].seq_len == 16 and resolved.training.stages["sft"].micro_batch == 2


def test_the_plan_carries_each_stages_settings(write_spec, tmp_path):
    spec = write_spec(techniques={"sft": {"enabled": True, "datasets": ["d"], "lr": 2e-4, "micro_batch": 2},
                                  "dpo": {"enabled": True, "lr": 3e-7, "batch_size": 4}})
    plan = build_plan(resolve(load_spec(spec)))
    stages = {s.kind: s for s in plan.stages}
    assert (stages["sft"].lr, stages["sft"].micro_batch, stages["sft"].grad_accumulation) == (2e-4, 2, 4)
    assert (stages["dpo"].lr, stages["dpo"].batch_size) == (3e-7, 4)
    assert stages["dpo"].provenance["lr"] == "spec:/techniques/dpo/lr" and not stages["dpo"].warnings


def test_a_global_lr_reaching_dpo_above_1e5_warns_with_both_values():
    dpo = build_plan(resolve(load_spec(SPEC))).stage("dpo")  # the card: optim.lr 1e-4 for every stage
    (warning,) = dpo.warnings
    assert "lr 0.0001 (spec:/optim/lr) is above 1e-05" in warning and "5e-06" in warning  # LoRA: its recipe 5e-6
    assert "techniques.dpo.lr" in warning
    cli = build_plan(resolve(load_spec(SPEC), overrides=TrainingOverrides(lr=3e-4))).stage("dpo")
    assert "lr 0.0003 (cli: --lr)" in cli.warnings[0]


def test_a_stage_seq_len_beyond_the_models_positions_is_refused(write_spec):
    spec = write_spec(techniques={"sft": {"seq_len": 64}})
    with pytest.raises(SpecError) as error:
        load_spec(spec)
    (problem,) = error.value.problems
    assert problem.path == "/techniques/sft/seq_len" and "exceeds the model's 32 positions" in problem.message
    with pytest.raises(SpecError, match="exceeds the model's 32 positions"):
        resolve(load_spec(write_spec(name="ok.json")), overrides=TrainingOverrides(seq_len=64))


def test_a_stage_warmup_not_shorter_than_its_steps_is_refused(write_spec):
    with pytest.raises(SpecError) as error:
        load_spec(write_spec(techniques={"dpo": {"warmup": 10, "max_steps": 10, "batch_size": 6, "micro_batch": 4}}))
    assert sorted(p.path for p in error.value.problems) == ["/techniques/dpo/micro_batch", "/techniques/dpo/warmup"]


def test_explain_shows_each_stages_values_with_their_provenance(write_spec):
    result = CliRunner().invoke(app, ["explain", str(write_spec(TINY)), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    text = json.dumps(data)
    assert "training.stages.dpo.lr" in text and "recipe: dpo lr (trl DPOConfig default" in text
