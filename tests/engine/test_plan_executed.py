"""What the plan prints is what runs: each stage's `executed.json` (written from the live objects:
the autocast dtype and GradScaler a forward saw, the reference form the factory built, the
parameters that required grad, the learning rates applied) equals what `train --plan --json`
printed for the same command, for fp32, bf16 and fp16, and for each DPO reference form."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from minimind_spec.cli import app

from .conftest import metrics


def _lora_spec(workspace, tmp_path, dtype="float32"):
    spec = json.loads((workspace / "tiny.json").read_text())
    spec["techniques"]["lora"] = {"enabled": True, "rank": 4, "alpha": 8, "placements": ["q_proj", "v_proj"]}
    spec["hyperparams"]["dtype"] = dtype
    path = tmp_path / f"lora-{dtype}.json"
    path.write_text(json.dumps(spec))
    return path


def _plan_and_run(command, out):
    planned = CliRunner().invoke(app, [*command, "--plan", "--json"])
    assert planned.exit_code == 0, planned.output
    ran = CliRunner().invoke(app, [*command, "--out", str(out), "--no-progress", "--eval-every", "0"])
    assert ran.exit_code == 0, ran.output
    return json.loads(planned.stdout)["stages"], ran


def _check(stage, stage_dir):
    executed = json.loads((stage_dir / "executed.json").read_text())
    assert executed["precision"] == stage["precision"]
    assert executed["reference"] == stage["reference"]
    assert executed["trainable_params"] == stage["trainable_params"]
    assert executed["peak_lr"] == pytest.approx(stage["lr"], rel=1e-12)
    assert executed["warmup"] == stage["warmup"]
    assert (executed["micro_batch"], executed["grad_accumulation"]) == (stage["micro_batch"], stage["grad_accumulation"])
    rows = metrics(stage_dir / "metrics.jsonl")
    assert max(row["lr"] for row in rows) == pytest.approx(stage["lr"], rel=1e-12)  # the schedule the rows logged
    recorded = json.loads((stage_dir / "plan.json").read_text())["plan"]
    assert {k: recorded[k] for k in ("lr", "warmup", "precision", "reference")} == {k: stage[k] for k in
                                                                                    ("lr", "warmup", "precision", "reference")}


@pytest.mark.parametrize("dtype,precision", [("float32", "fp32"), ("bfloat16", "bf16 autocast"),
                                             ("float16", "fp16 autocast with a GradScaler")])
def test_pretraining_runs_in_the_planned_precision(workspace, tmp_path, dtype, precision):
    spec = json.loads((workspace / "tiny.json").read_text())
    spec["hyperparams"]["dtype"] = dtype
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    command = ["train", str(tmp_path / "spec.json"), "--stage", "pretrain", "--pretrain-data", str(workspace / "pretrain.jsonl"),
               "--tokenizer", str(workspace / "tok"), "--max-steps", "5", "--warmup", "3", "--micro-batch", "2"]
    (stage,), _ = _plan_and_run(command, tmp_path / "run")
    assert stage["precision"] == precision
    _check(stage, tmp_path / "run" / "pretrain")


@pytest.mark.parametrize("lora,extra,reference", [
    (False, (), "copy"), (False, ("--precompute-ref",), "precomputed"), (True, (), "adapters off")])
def test_dpo_builds_the_planned_reference(workspace, trained, tmp_path, lora, extra, reference):
    spec = _lora_spec(workspace, tmp_path) if lora else workspace / "tiny.json"
    command = ["train", str(spec), "--stage", "dpo", "--init", str(trained), "--dpo-data", str(workspace / "pairs.jsonl"),
               "--tokenizer", str(workspace / "tok"), "--max-steps", "3", "--warmup", "2", *extra]
    (stage,), _ = _plan_and_run(command, tmp_path / "run")
    assert stage["reference"] == reference
    _check(stage, tmp_path / "run" / "dpo")


def test_dpo_after_a_lora_stage_precomputes_its_reference(workspace, trained, tmp_path):
    """The SFT stage trains the adapters, so disabling them would not give DPO's input model: the plan precomputes."""
    command = ["train", str(_lora_spec(workspace, tmp_path)), "--stage", "sft", "--stage", "dpo", "--init", str(trained),
               "--sft-data", str(workspace / "sft.jsonl"), "--dpo-data", str(workspace / "pairs.jsonl"), "--tokenizer",
               str(workspace / "tok"), "--max-steps", "3", "--warmup", "2"]
    (sft, dpo), _ = _plan_and_run(command, tmp_path / "run")
    assert dpo["reference"] == "precomputed" and sft["trainable_roles"] == ["lora"]
    _check(sft, tmp_path / "run" / "sft")
    _check(dpo, tmp_path / "run" / "dpo")
