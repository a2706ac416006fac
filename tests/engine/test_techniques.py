"""DPO and distillation stages end to end through the CLI, from a trained run: the reference
is the stage's input model (so the first DPO loss is exactly ln 2 and the rewards 0), the three
reference forms give the same training, the preference metrics move the right way; a student
equal to its teacher has no distillation loss, a teacher with another vocabulary is refused."""

from __future__ import annotations

import copy
import json
import math

import pytest
from typer.testing import CliRunner

from minimind_spec.cli import app

from .conftest import metrics


def _dpo(workspace, spec, out, init, *extra):
    return CliRunner().invoke(app, ["train", str(spec), "--stage", "dpo", "--init", str(init), "--dpo-data",
                                    str(workspace / "pairs.jsonl"), "--tokenizer", str(workspace / "tok"), "--out", str(out),
                                    "--no-progress", "--eval-every", "10", *extra])


def test_dpo_from_the_sft_model(workspace, trained, tmp_path):
    result = _dpo(workspace, workspace / "tiny.json", tmp_path / "copy", trained, "--max-steps", "20")
    assert result.exit_code == 0, result.output
    rows = metrics(tmp_path / "copy" / "dpo" / "metrics.jsonl")
    first, last = rows[0], rows[-1]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at the start
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert key in last
    margins = [row["rewards/margins"] for row in rows[-10:]]
    assert sum(margins) / len(margins) > 0 and last["eval_rewards/margins"] > 0  # it prefers the right sums, held out too
    assert "eval_rewards/accuracies" in last

    pre = _dpo(workspace, workspace / "tiny.json", tmp_path / "pre", trained, "--max-steps", "20", "--precompute-ref")
    assert pre.exit_code == 0, pre.output
    same = [row["loss"] for row in metrics(tmp_path / "pre" / "dpo" / "metrics.jsonl")]
    assert same == pytest.approx([row["loss"] for row in rows], rel=1e-4)  # precomputed = a frozen copy


def test_dpo_with_lora_uses_the_base_as_reference(workspace, trained, tmp_path):
    spec = json.loads((workspace / "tiny.json").read_text())
    spec["techniques"]["lora"] = {"enabled": True, "rank": 4, "alpha": 8, "placements": ["q_proj", "v_proj"]}
    (tmp_path / "lora.json").write_text(json.dumps(spec))
    # the base weights come from the trained dense run; the adapters start fresh, B = 0
    result = _dpo(workspace, tmp_path / "lora.json", tmp_path / "run", trained, "--max-steps", "6", "--lr", "1e-2")
    assert result.exit_code == 0, result.output
    rows = metrics(tmp_path / "run" / "dpo" / "metrics.jsonl")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # adapters at zero: policy == base == reference
    assert rows[-1]["loss"] != pytest.approx(math.log(2), abs=1e-4)  # the adapters moved the policy


def _distill_spec(workspace, tmp_path, teacher_vocab=None):
    spec = json.loads((workspace / "tiny.json").read_text())
    teacher = copy.deepcopy(spec)
    if teacher_vocab is not None:
        teacher["hyperparams"]["vocab"] = teacher_vocab
    (tmp_path / "teacher.json").write_text(json.dumps(teacher))
    spec["techniques"]["distill"] = {"enabled": True, "teacher": "teacher", "temperature": 2.0, "alpha": 0.5}
    spec["tricks"] = ["reasoning-token-masking"]
    (tmp_path / "student.json").write_text(json.dumps(spec))
    return tmp_path / "student.json"


def _distill(workspace, spec, out, init, teacher, *extra):
    return CliRunner().invoke(app, ["train", str(spec), "--stage", "distill", "--init", str(init), "--teacher", str(teacher),
                                    "--distill-data", str(workspace / "sft.jsonl"), "--tokenizer", str(workspace / "tok"),
                                    "--out", str(out), "--no-progress", "--eval-every", "5", *extra])


def test_distillation_from_a_teacher_run(workspace, trained, tmp_path):
    student = _distill_spec(workspace, tmp_path)
    same = _distill(workspace, student, tmp_path / "same", trained, trained, "--max-steps", "1")
    assert same.exit_code == 0, same.output
    row = metrics(tmp_path / "same" / "distill" / "metrics.jsonl")[0]
    assert abs(row["soft"]) < 1e-5  # the student is its teacher: no divergence, only the label loss
    assert row["loss"] == pytest.approx(0.5 * row["ce"], rel=1e-5)

    fresh = _distill(workspace, student, tmp_path / "fresh", trained / "pretrain", trained, "--max-steps", "10")
    assert fresh.exit_code == 0, fresh.output
    rows = metrics(tmp_path / "fresh" / "distill" / "metrics.jsonl")
    assert rows[0]["soft"] > 0.01 and rows[-1]["soft"] < rows[0]["soft"]  # the student moves toward the teacher
    assert "eval_perplexity" in rows[-1] and "eval_soft" in rows[-1]

    (tmp_path / "v").mkdir()
    other = _distill_spec(workspace, tmp_path / "v", teacher_vocab=512)  # refused by validation, before any work
    refused = _distill(workspace, other, tmp_path / "no", trained, trained, "--max-steps", "1")
    assert refused.exit_code == 2 and "shared vocabulary" in refused.output
    assert not (tmp_path / "no").exists()


def test_every_stage_of_a_card_like_spec_in_one_command(workspace, trained, tmp_path):
    spec = json.loads((workspace / "tiny.json").read_text())
    (tmp_path / "teacher.json").write_text(json.dumps(spec))
    spec["techniques"] |= {"lora": {"enabled": True, "rank": 4, "alpha": 8, "placements": ["q_proj", "v_proj"]},
                           "distill": {"enabled": True, "teacher": "teacher", "temperature": 2.0},
                           "dpo": {"enabled": True, "beta": 0.1}}
    (tmp_path / "card.json").write_text(json.dumps(spec))
    data = ["--pretrain-data", str(workspace / "pretrain.jsonl"), "--sft-data", str(workspace / "sft.jsonl"),
            "--distill-data", str(workspace / "sft.jsonl"), "--dpo-data", str(workspace / "pairs.jsonl"),
            "--teacher", str(trained), "--tokenizer", str(workspace / "tok")]
    plan = CliRunner().invoke(app, ["train", str(tmp_path / "card.json"), "--plan", "--json", *data, "--max-steps", "3"])
    assert plan.exit_code == 0, plan.output
    stages = json.loads(plan.stdout)["stages"]
    assert [s["kind"] for s in stages] == ["pretrain", "sft", "distill", "dpo"] and all(s["runnable"] for s in stages)
    run = CliRunner().invoke(app, ["train", str(tmp_path / "card.json"), *data, "--max-steps", "3", "--out", str(tmp_path / "run"),
                                   "--no-progress", "--eval-every", "0"])
    assert run.exit_code == 0, run.output
    assert all((tmp_path / "run" / kind / "final" / "model.safetensors").is_file() for kind in ("pretrain", "sft", "distill", "dpo"))
    assert (tmp_path / "run" / "dpo" / "final" / "adapter" / "adapter_config.json").is_file()
    first_dpo = metrics(tmp_path / "run" / "dpo" / "metrics.jsonl")[0]
    assert first_dpo["loss"] == pytest.approx(math.log(2), abs=1e-5)  # the reference is the distilled model it starts from


def test_precomputed_reference_in_the_policys_precision(workspace, trained, tmp_path):
    result = _dpo(workspace, workspace / "tiny.json", tmp_path / "bf16", trained, "--max-steps", "1", "--precompute-ref", "--bf16")
    assert result.exit_code == 0, result.output
    first = metrics(tmp_path / "bf16" / "dpo" / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the same bf16 autocast as the policy's forward
