"""The training plan (`build_plan`, `train --plan`): stage order, trainable sets, settings with
provenance (spec, card recipe, cli), blocked stages, and estimates checked by hand against the
graph's own counts. Front end only: no data is read and torch is never needed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from minimind_spec import SpecError, build_graph, load_spec, resolve
from minimind_spec.cli import app
from minimind_spec.config import TrainingOverrides
from minimind_spec.graph import BASE_ROLES, ParamRole, graph_costs, params_with_roles
from minimind_spec.plan import PlanInputs, build_plan

from .conftest import SPEC, TINY


@pytest.fixture(scope="module")
def card():
    return resolve(load_spec(SPEC))


def sft_file(tmp_path, size: int = 7000):
    path = tmp_path / "sft.jsonl"
    path.write_text("x" * size)
    return path


def test_card_stages_in_order_with_lora_as_the_adapter_mode(card):
    plan = build_plan(card)
    assert [s.kind for s in plan.stages] == ["pretrain", "sft", "distill", "dpo"]
    graph = build_graph(card)
    pretrain, *post = plan.stages
    assert pretrain.trainable_params == params_with_roles(graph, BASE_ROLES) == 30_548_480
    for stage in post:
        assert stage.trainable_roles == ("lora",)
        assert stage.trainable_params == graph_costs(graph, card.model).lora_params == 655_360
    assert pretrain.no_decay_params == params_with_roles(graph, {ParamRole.NORM, ParamRole.EMBEDDING})
    assert pretrain.decay_params + pretrain.no_decay_params == pretrain.trainable_params


def test_card_recipes_fill_what_the_spec_leaves_out(card):
    sft = build_plan(card).stages[1]
    assert sft.batch_size == 8 and sft.provenance["batch_size"] == "recipe: sft batch_size (the card's SFT recipe)"
    assert sft.seq_len == 1024 and sft.provenance["seq_len"] == "spec:/hyperparams/seq_len"  # the spec says it: the spec wins
    assert sft.warmup == 100 and sft.provenance["warmup"] == "spec:/optim/warmup"
    assert sft.epochs == 3 and sft.provenance["epochs"] == "spec:/techniques/sft/epochs"


def test_dpo_takes_the_recipe_grad_clip_when_the_spec_is_silent(write_spec):
    tiny = write_spec(techniques={"dpo": {"enabled": True}}, regularization={"weight_decay": 0.0})
    dpo = build_plan(resolve(load_spec(tiny))).stages[-1]
    assert dpo.kind == "dpo" and dpo.grad_clip == 1.0 and dpo.provenance["grad_clip"] == "recipe: dpo grad_clip (the card's DPO recipe)"
    clipped = write_spec(techniques={"dpo": {"enabled": True}}, regularization={"grad_clip": 0.5}, name="clipped.json")
    assert build_plan(resolve(load_spec(clipped))).stages[-1].provenance["grad_clip"] == "spec:/regularization/grad_clip"


def test_command_line_overrides_show_as_cli(card, tmp_path):
    resolved = resolve(load_spec(SPEC), overrides=TrainingOverrides(lr=3e-4, batch_size=16, micro_batch=4))
    plan = build_plan(resolved)
    sft = plan.stages[1]
    assert (sft.lr, sft.batch_size, sft.micro_batch, sft.grad_accumulation) == (3e-4, 16, 4, 4)
    assert sft.provenance["lr"] == "cli: --lr" and sft.provenance["batch_size"] == "cli: --batch-size"
    assert sft.provenance["micro_batch"] == "cli: --micro-batch"


def test_blocked_stages_say_why_and_how_to_unblock(card, tmp_path):
    plan = build_plan(card, PlanInputs(data={"sft": sft_file(tmp_path)}))
    by_kind = {s.kind: s for s in plan.stages}
    assert (by_kind["pretrain"].blocked, by_kind["pretrain"].unblock) == ("no data", "--pretrain-data FILE")
    assert "pretrain" in by_kind["sft"].blocked and by_kind["sft"].unblock.startswith("--init")
    with_init = build_plan(card, PlanInputs(data={"sft": sft_file(tmp_path), "distill": sft_file(tmp_path)}, init=tmp_path))
    assert [s.kind for s in with_init.stages] == ["sft", "distill", "dpo"]  # --init: the base exists, no pretraining
    stages = {s.kind: s for s in with_init.stages}
    assert stages["sft"].blocked is None and stages["sft"].init_from == str(tmp_path)
    assert (stages["distill"].blocked, stages["distill"].unblock) == ("no teacher checkpoint", "--teacher RUN_DIR")
    missing = build_plan(card, PlanInputs(data={"sft": tmp_path / "nope.jsonl"}, init=tmp_path)).stages[0]
    assert "not found" in missing.blocked


def test_estimates_by_hand(card, tmp_path):
    resolved = resolve(load_spec(SPEC), overrides=TrainingOverrides(max_steps=10))
    graph = build_graph(resolved)
    full = graph_costs(graph, resolved.model, BASE_ROLES)
    plan = build_plan(resolved, PlanInputs(tokens_per_s=1000.0))
    pretrain = plan.stages[0]
    tokens = 10 * 8 * 1024
    assert pretrain.tokens == tokens
    assert pretrain.train_flops == tokens * 3 * full.flops_per_token
    assert pretrain.memory.weights == 4 * full.total_params
    assert pretrain.memory.gradients == 4 * full.trainable_params and pretrain.memory.optimizer == 8 * full.trainable_params
    assert pretrain.memory.activations == 8 * full.activation_bytes  # micro-batch 8 at the spec's seq_len
    assert pretrain.wall_seconds == pytest.approx(tokens / 1000.0)
    teacher = resolve(load_spec(SPEC.parent / "larger_model.json"))
    distill = next(s for s in plan.stages if s.kind == "distill")
    assert distill.memory.frozen_models == 2 * params_with_roles(build_graph(teacher), BASE_ROLES)  # bf16 teacher


def test_steps_from_the_data_file_size(card, tmp_path):
    sft = build_plan(card, PlanInputs(data={"sft": sft_file(tmp_path, 2_000_000)}, init=tmp_path)).stages[0]
    expected_steps = -(-3 * 2_000_000 // 3.5 // (8 * 1024))  # 3 epochs at ~3.5 bytes per token, ceil
    assert sft.tokens == pytest.approx(expected_steps * 8 * 1024, rel=1e-3)


def test_micro_batch_must_divide_the_batch(card):
    with pytest.raises(SpecError) as error:
        build_plan(resolve(load_spec(SPEC), overrides=TrainingOverrides(micro_batch=3)))
    assert "does not divide" in error.value.problems[0].message


def test_only_named_stages(card):
    assert [s.kind for s in build_plan(card, PlanInputs(stages=("dpo", "sft"))).stages] == ["sft", "dpo"]


def test_a_spec_with_no_techniques_plans_pretraining_only(write_spec):
    assert [s.kind for s in build_plan(resolve(load_spec(write_spec(TINY)))).stages] == ["pretrain"]


runner = CliRunner()


def test_train_plan_json_matches_the_library():
    result = runner.invoke(app, ["train", str(SPEC), "--plan", "--json", "--max-steps", "5", "--lr", "2e-4"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [s["kind"] for s in data["stages"]] == ["pretrain", "sft", "distill", "dpo"]
    assert data["stages"][1]["provenance"]["lr"] == "cli: --lr" and data["stages"][1]["lr"] == 2e-4
    assert data["stages"][0]["tokens"] == 5 * 8 * 1024 and data["stages"][0]["runnable"] is False


def test_train_plan_text_and_underscore_spellings():
    result = runner.invoke(app, ["train", str(SPEC), "--plan", "--batch_size", "4", "--max_steps", "3"])
    assert result.exit_code == 0, result.output
    assert "Training plan" in result.stdout and "blocked: no data -> --pretrain-data FILE" in result.stdout
    assert "batch 4 (cli: --batch-size)" in result.stdout


@pytest.mark.parametrize("args", [["--plan", "--stage", "rlhf"], ["--plan", "--micro-batch", "3"], []])
def test_train_errors_exit_2(args):
    result = runner.invoke(app, ["train", str(SPEC), *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_the_tokenizer_must_fit_the_spec_vocab_which_may_pad_it(card):
    assert not build_plan(card, PlanInputs(tokenizer_vocab=6400)).warnings
    padded = build_plan(card, PlanInputs(tokenizer_vocab=6000))  # 400 embedding rows no token uses: padding
    assert padded.stages and any("6,400" in w and "6,000" in w and "400 rows" in w for w in padded.warnings)
    with pytest.raises(SpecError) as error:
        build_plan(card, PlanInputs(tokenizer_vocab=7000))
    (problem,) = error.value.problems
    assert problem.path == "/hyperparams/vocab" and "6,400" in problem.message and "7,000" in problem.message


def test_command_line_values_outside_the_schemas_bounds_are_all_reported():
    result = runner.invoke(app, ["train", str(SPEC), "--plan", "--lora-rank", "0", "--dpo-beta", "0", "--lr", "-1",
                                 "--label-smoothing", "1", "--batch-size", "8"])
    assert result.exit_code == 2 and "4 problems" in result.output and "Traceback" not in result.output
    for expected in ("--lora-rank 0: must be at least 1", "--dpo-beta 0.0: must be above 0.0", "--lr -1.0: must be above 0.0",
                     "--label-smoothing 1.0: must be at least 0.0 and below 1.0"):
        assert expected in result.output


def test_lora_flags_override_the_spec_with_cli_provenance(card):
    resolved = resolve(load_spec(SPEC), None, TrainingOverrides(lora_targets=("q_proj", "v_proj"), lora_rank=4, bf16=True))
    assert resolved.model.lora.targets == ("q_proj", "v_proj") and resolved.model.lora.rank == 4
    assert resolved.provenance["model.lora.targets"] == "cli: --lora-targets" and resolved.provenance["model.dtype"] == "cli: --bf16"
    off = resolve(load_spec(SPEC), None, TrainingOverrides(lora=False))
    assert off.model.lora is None and build_plan(off).stages[1].trainable_roles != ("lora",)
    with pytest.raises(SpecError, match="did you mean 'q_proj'"):
        resolve(load_spec(SPEC), None, TrainingOverrides(lora_targets=("qproj",)))
