"""What a user meets on the way through a run, each as one plain message (never a traceback):
a run shorter than its warmup, a resume, a full disk while saving, an --out that holds another
model's run or unrelated files, LoRA on a random base, skipped and truncated data, a failed
run's cache, and the held-out loss labelled with its step when it is not the last step's."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from minimind_spec.cli import app

from .conftest import args, metrics


def _pretrain(workspace, out, *extra):
    return CliRunner().invoke(app, args(workspace, out, "--stage", "pretrain", "--eval-every", "0", *extra))


def test_a_run_shorter_than_its_warmup_warns_with_both_numbers(workspace, tmp_path):
    result = _pretrain(workspace, tmp_path / "run", "--max-steps", "2", "--warmup", "5")
    assert result.exit_code == 0, result.output
    assert "the stage runs 2 steps but warms up over 5" in result.output and "never reaches the peak 0.003" in result.output


def test_resume_says_which_stage_from_which_step(workspace, tmp_path):
    assert _pretrain(workspace, tmp_path / "run", "--max-steps", "4", "--save-every", "2").exit_code == 0
    stage = tmp_path / "run" / "pretrain"  # back to the step-2 checkpoint, as if killed after it
    (stage / "latest").write_text("checkpoints/step-00000002\n")
    shutil.rmtree(stage / "checkpoints" / "step-00000004")
    resumed = _pretrain(workspace, tmp_path / "run", "--max-steps", "4", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resuming stage pretrain from step 2" in resumed.output
    assert [row["step"] for row in metrics(tmp_path / "run" / "pretrain" / "metrics.jsonl")] == [1, 2, 3, 4]
    executed = json.loads((stage / "executed.json").read_text())  # the whole stage's record, not this invocation's
    assert (executed["peak_lr"], executed["warmup"], executed["resumed_from"]) == (0.003, 2, 2)


def test_resume_refuses_another_seed_and_applies_forced_changes(workspace, tmp_path):
    assert _pretrain(workspace, tmp_path / "run", "--max-steps", "4", "--save-every", "2").exit_code == 0
    stage = tmp_path / "run" / "pretrain"
    (stage / "latest").write_text("checkpoints/step-00000002\n")
    shutil.rmtree(stage / "checkpoints" / "step-00000004")
    refused = _pretrain(workspace, tmp_path / "run", "--max-steps", "4", "--resume", "--seed", "1")
    assert refused.exit_code == 2 and "run.seed: 0 -> 1" in refused.output  # the seed orders the data
    forced = _pretrain(workspace, tmp_path / "run", "--max-steps", "4", "--resume", "--weight-decay", "0.5", "--force")
    assert forced.exit_code == 0 and "stage.weight_decay: 0.0 -> 0.5" in forced.output
    groups = json.loads((stage / "checkpoints" / "step-00000004" / "optimizer.json").read_text())["param_groups"]
    assert groups[0]["weight_decay"] == 0.5  # applied, not the checkpoint's


def test_a_real_file_size_limit_while_saving_is_one_line(workspace, tmp_path):
    import resource
    import subprocess
    import sys

    from ..conftest import ROOT

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))  # the checkpoint's weights are larger

    done = subprocess.run([sys.executable, "-m", "minimind_spec", *args(workspace, tmp_path / "run", "--stage", "pretrain",
                                                                        "--max-steps", "2", "--eval-every", "0")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "could not write the step-2 checkpoint" in done.stderr
    assert "File too large" in done.stderr


def test_a_metrics_file_cut_short_still_reads(tmp_path):
    from minimind_spec.metrics import read_metrics

    rows = [json.dumps({"step": s, "loss": 1.0, "lr": 1e-3, "tokens": s}) for s in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 3, "lo')  # the disk filled mid-line
    assert [row.step for row in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_a_full_disk_while_saving_is_one_line_naming_what_was_kept(workspace, tmp_path, monkeypatch):
    from minimind_spec.engine.train import checkpoint

    real = checkpoint.write_tensors

    def write_tensors(tensors, path, metadata=None):  # the disk fills up while the step-4 checkpoint is written
        if "step-00000004" in path.parent.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata)

    monkeypatch.setattr(checkpoint, "write_tensors", write_tensors)
    result = _pretrain(workspace, tmp_path / "run", "--max-steps", "6", "--save-every", "2")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "could not write the step-4 checkpoint" in result.output and "No space left on device" in result.output
    assert "step-00000002 is kept" in result.output
    stage = tmp_path / "run" / "pretrain"
    assert sorted(p.name for p in (stage / "checkpoints").iterdir()) == ["step-00000002"]  # no half-written step 4
    assert (stage / "latest").read_text().strip() == "checkpoints/step-00000002"


def test_a_full_disk_while_writing_the_final_model_keeps_the_checkpoint(workspace, tmp_path, monkeypatch):
    from minimind_spec.engine.train import run

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run, "write_tensors", full)
    result = _pretrain(workspace, tmp_path / "run", "--max-steps", "2")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "could not write" in result.output and "final" in result.output and "step-00000002 is kept" in result.output
    assert not (tmp_path / "run" / "pretrain" / "final").exists()
    assert not [p for p in (tmp_path / "run" / "pretrain").iterdir() if p.name.startswith(".")]  # no staging left


def test_out_must_be_this_models_run_or_new(workspace, tmp_path):
    assert _pretrain(workspace, tmp_path / "run", "--max-steps", "1").exit_code == 0
    other = json.loads((workspace / "tiny.json").read_text())
    other["hyperparams"]["n_layers"] = 3
    (tmp_path / "other.json").write_text(json.dumps(other))
    command = args(workspace, tmp_path / "run", "--stage", "pretrain", "--max-steps", "1", "--resume")
    command[1] = str(tmp_path / "other.json")
    refused = CliRunner().invoke(app, command)
    assert refused.exit_code == 2 and "holds a run of another model" in refused.output and "n_layers" in refused.output
    assert "--force" in refused.output and "Traceback" not in refused.output

    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "holiday.jpg").write_bytes(b"\xff\xd8")
    refused = _pretrain(workspace, unrelated, "--max-steps", "1")
    assert refused.exit_code == 2 and "holds no run" in refused.output and "holiday.jpg" in refused.output
    forced = _pretrain(workspace, unrelated, "--max-steps", "1", "--force")
    assert forced.exit_code == 0, forced.output
    assert (unrelated / "holiday.jpg").is_file()  # --force trains beside it, deletes nothing


def test_lora_without_a_base_warns_that_the_base_is_random(workspace, tmp_path):
    spec = json.loads((workspace / "tiny.json").read_text())
    spec["techniques"]["lora"] = {"enabled": True, "rank": 4, "placements": ["q_proj", "v_proj"]}
    (tmp_path / "lora.json").write_text(json.dumps(spec))
    planned = CliRunner().invoke(app, ["train", str(tmp_path / "lora.json"), "--plan", "--stage", "sft", "--sft-data",
                                       str(workspace / "sft.jsonl")])
    assert planned.exit_code == 0 and "randomly initialised base" in planned.output
    with_base = CliRunner().invoke(app, ["train", str(tmp_path / "lora.json"), "--plan", "--json"])
    assert not any("randomly" in w for s in json.loads(with_base.stdout)["stages"] for w in s["warnings"])  # pretraining first


def test_skipped_lines_and_truncated_samples_are_counted(workspace, tmp_path):
    lines = (workspace / "sft_uneven.jsonl").read_text().splitlines()
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join([lines[0], "{not json", *lines[1:10], '{"conversations": []}', *lines[10:20]]) + "\n")
    result = CliRunner().invoke(app, ["train", str(workspace / "tiny.json"), "--stage", "sft", "--sft-data", str(data),
                                      "--tokenizer", str(workspace / "tok"), "--out", str(tmp_path / "run"), "--max-steps", "1",
                                      "--no-progress", "--seq-len", "24", "--skip-bad-lines"])
    assert result.exit_code == 0, result.output
    assert "skipped 2 malformed lines" in result.output and "lines 2, 12" in result.output
    assert "samples were longer than 24 tokens" in result.output


def test_a_failed_run_leaves_no_half_built_cache(workspace, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text((workspace / "sft.jsonl").read_text() + "{broken\n")
    result = CliRunner().invoke(app, ["train", str(workspace / "tiny.json"), "--stage", "sft", "--sft-data", str(data),
                                      "--tokenizer", str(workspace / "tok"), "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 2 and ":121:" in result.output and "Traceback" not in result.output
    assert list((tmp_path / "run" / "cache").iterdir()) == []
    killed = tmp_path / "run" / "cache" / ".building.999999999.abc"  # a build whose process was killed
    killed.mkdir()
    data.write_text((workspace / "sft.jsonl").read_text())
    again = CliRunner().invoke(app, ["train", str(workspace / "tiny.json"), "--stage", "sft", "--sft-data", str(data),
                                     "--tokenizer", str(workspace / "tok"), "--out", str(tmp_path / "run"), "--no-progress",
                                     "--max-steps", "1"])
    assert again.exit_code == 0, again.output
    assert not killed.exists()


def test_the_held_out_loss_printed_is_labelled_with_its_step_when_older(capsys):
    from minimind_spec.cli.plan_report import print_results
    from minimind_spec.engine.train.loop import Evaluation

    stage = SimpleNamespace(kind="sft", trainable_roles=("lora",), trainable_params=10, total_params=100,
                            trainable_percent=10.0, declared=())
    fresh = SimpleNamespace(interrupted=False, steps=40, last_loss=1.5, evaluation=Evaluation(40, 1.25, {}), skipped_steps=0, stopped_by=None)
    older = SimpleNamespace(interrupted=True, steps=43, last_loss=1.4, evaluation=Evaluation(40, 1.25, {}), skipped_steps=0, stopped_by=None)
    print_results(SimpleNamespace(stages=(stage,)), [fresh], Path("run"))
    assert "held-out loss 1.2500;" in capsys.readouterr().out
    print_results(SimpleNamespace(stages=(stage,)), [older], Path("run"))
    assert "held-out loss 1.2500 (at step 40)" in capsys.readouterr().out


def test_a_plan_shows_paths_with_brackets_as_they_are(workspace, tmp_path):
    odd = tmp_path / "d" / "[old]" / "sft.jsonl"
    odd.parent.mkdir(parents=True)
    odd.write_text((workspace / "sft.jsonl").read_text())
    result = CliRunner().invoke(app, ["train", str(workspace / "tiny.json"), "--plan", "--sft-data", str(odd), "--stage", "sft"],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert "[old]/sft.jsonl" in result.output


@pytest.mark.parametrize("flag", ["--seq-len", "--micro-batch"])
def test_new_command_line_values_are_bounded(workspace, flag):
    result = CliRunner().invoke(app, ["train", str(workspace / "tiny.json"), "--plan", flag, "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
