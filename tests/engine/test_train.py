"""The training engine end to end on a tiny spec and a generated corpus: tokenizer, pretraining
then SFT through the CLI (loss falls, each stage starts from the last), and the kill-and-resume
guarantee: a run killed with SIGKILL and resumed logs the same loss at every later step as a
run that was never interrupted (CPU, deterministic mode). Data parallelism: test_accumulation
(DDP) and the FSDP test here."""

from __future__ import annotations

import json
from dataclasses import replace
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from minimind_spec import build_graph, load_spec, resolve
from minimind_spec.cli import app
from minimind_spec.engine import compile_graph
from minimind_spec.engine.export import load_weights_into

from ..conftest import ROOT
from .conftest import _has, args, metrics, stage_setup

def test_pretrain_then_sft(workspace, trained, tmp_path):
    out = trained
    pretrain, sft = metrics(out / "pretrain" / "metrics.jsonl"), metrics(out / "sft" / "metrics.jsonl")
    assert [row["step"] for row in pretrain] == list(range(1, 31)) and len(sft) == 30
    assert pretrain[-1]["loss"] < pretrain[0]["loss"] - 1.0  # it learns
    evals = [row["eval_perplexity"] for row in pretrain if "eval_perplexity" in row]
    assert len(evals) == 3 and evals[-1] < evals[0]
    assert sft[-1]["loss"] < sft[0]["loss"]
    # SFT starts from the pretrained weights: from the same random init (seed 0) its first loss would differ
    fresh = tmp_path / "fresh"
    assert CliRunner().invoke(app, ["build", str(workspace / "tiny.json"), "--out", str(fresh), "--seed", "0"]).exit_code == 0
    scratch = CliRunner().invoke(app, ["train", str(workspace / "tiny.json"), "--stage", "sft", "--init", str(fresh),
                                       "--sft-data", str(workspace / "sft.jsonl"), "--tokenizer", str(workspace / "tok"),
                                       "--out", str(tmp_path / "scratch"), "--max-steps", "1", "--no-progress"])
    assert scratch.exit_code == 0, scratch.output
    assert metrics(tmp_path / "scratch" / "sft" / "metrics.jsonl")[0]["loss"] != sft[0]["loss"]
    resolved = resolve(load_spec(workspace / "tiny.json"))
    graph = build_graph(resolved)
    a, b = compile_graph(graph, seed=1), compile_graph(graph, seed=1)
    load_weights_into(a, out / "pretrain" / "final" / "model.safetensors")
    load_weights_into(b, out / "sft" / "final" / "model.safetensors")
    assert not torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert (out / "sft" / "final" / "tokenizer.json").is_file() and (out / "sft" / "final" / "config.json").is_file()
    if _has("matplotlib"):
        assert (out / "pretrain" / "loss.png").stat().st_size > 1000
    answer = CliRunner().invoke(app, ["generate", str(out), "what is 2 plus 3", "--max-new-tokens", "8"])
    assert answer.exit_code == 0 and answer.stdout.strip(), answer.output  # the run's own tokenizer, the sft model
    again = CliRunner().invoke(app, args(workspace, out, "--max-steps", "30"))
    assert again.exit_code == 2 and "--resume" in again.output  # an existing run is never overwritten


def _train_process(workspace, out, *extra):
    command = [sys.executable, "-m", "minimind_spec", *args(workspace, out, "--stage", "pretrain", "--max-steps", "14",
                                                            "--save-every", "3", "--eval-every", "5", "--deterministic", *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigkill_and_resume_give_the_same_losses(workspace, tmp_path):
    reference = _train_process(workspace, tmp_path / "reference")
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()[-2000:]
    killed_dir = tmp_path / "killed"
    victim = _train_process(workspace, killed_dir)
    metrics_path = killed_dir / "pretrain" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it mid-run, between checkpoints (saved every 3 steps)
        if metrics_path.is_file() and len(metrics_path.read_text().splitlines()) >= 8:
            break
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert len(metrics(metrics_path)) < 14
    resumed = _train_process(workspace, killed_dir, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    expected = metrics(tmp_path / "reference" / "pretrain" / "metrics.jsonl")
    got = metrics(metrics_path)
    assert [row["step"] for row in got] == list(range(1, 15))
    assert [row["loss"] for row in got] == [row["loss"] for row in expected]
    assert [row.get("eval_loss") for row in got] == [row.get("eval_loss") for row in expected]


class _Flaky:
    """An objective whose loss sum is NaN at the given (1-based) calls: forwards everything else."""

    def __init__(self, objective, bad_calls):
        self.inner, self.bad_calls, self.calls = objective, set(bad_calls), 0

    def count(self, batch):
        return self.inner.count(batch)

    def __call__(self, model, batch):
        self.calls += 1
        out = self.inner(model, batch)
        return replace(out, loss_sum=out.loss_sum * float("nan")) if self.calls in self.bad_calls else out


def _flaky_run(workspace, run_dir, max_steps, bad_calls):
    from minimind_spec.engine.train.loop import train_stage
    from minimind_spec.engine.train.precision import PrecisionRuntime

    graph, model, stage, parts, settings = stage_setup(workspace / "tiny.json", "pretrain", workspace / "pretrain.jsonl",
                                                       run_dir, max_steps=max_steps, batch_size=4, micro_batch=4)
    parts = replace(parts, objective=_Flaky(parts.objective, bad_calls))
    return model, settings, lambda: train_stage(stage, parts, model, graph, settings, PrecisionRuntime(stage.precision, "cpu"))


def test_a_non_finite_loss_skips_the_step_and_too_many_stop_the_run(workspace, tmp_path):
    from minimind_spec.engine.train.loop import TrainingStopped
    from minimind_spec.model_files import latest_checkpoint

    model, settings, run = _flaky_run(workspace, tmp_path, 6, {3})
    result = run()
    rows = metrics(settings.stage_dir / "metrics.jsonl")
    assert result.skipped_steps == 1 and [row["step"] for row in rows] == [1, 2, 4, 5, 6]
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step changed nothing

    model, settings, run = _flaky_run(workspace, tmp_path / "b", 20, set(range(5, 20)))
    with pytest.raises(TrainingStopped, match="non-finite"):
        run()
    assert latest_checkpoint(settings.stage_dir).name == "step-00000004"  # the last good one, intact


def _interrupt_after_3_steps(process, metrics_path):
    """Ctrl-C (SIGINT) once the run has logged 3 steps; the process must then exit 130 (interrupted) after saving."""
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics_path.is_file() and len(metrics_path.read_text().splitlines()) >= 3):
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130, process.stderr.read().decode()[-2000:]
    return metrics_path


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(workspace, tmp_path):
    process = _train_process(workspace, tmp_path / "run", "--save-every", "1000")
    metrics_path = _interrupt_after_3_steps(process, tmp_path / "run" / "pretrain" / "metrics.jsonl")
    steps = len(metrics(metrics_path))
    assert 3 <= steps < 14
    from minimind_spec.engine.train.checkpoint import read_state
    from minimind_spec.model_files import latest_checkpoint

    assert read_state(latest_checkpoint(tmp_path / "run" / "pretrain")).step == steps  # saved where it stopped
    assert "interrupted, saved" in process.stdout.read().decode()


def test_resuming_with_a_changed_spec_is_refused_unless_forced(workspace, tmp_path):
    out = tmp_path / "run"
    first = CliRunner().invoke(app, args(workspace, out, "--stage", "pretrain", "--max-steps", "2"))
    assert first.exit_code == 0, first.output
    changed = CliRunner().invoke(app, args(workspace, out, "--stage", "pretrain", "--max-steps", "4", "--resume",
                                           "--lr", "1e-3"))
    assert changed.exit_code == 2 and "trained with other settings" in changed.output and "--force" in changed.output
    assert "stage.lr: 0.003 -> 0.001" in changed.output  # each changed value, old -> new
    forced = CliRunner().invoke(app, args(workspace, out, "--stage", "pretrain", "--max-steps", "4", "--resume",
                                          "--lr", "1e-3", "--force"))
    assert forced.exit_code == 0, forced.output
    assert [row["step"] for row in metrics(out / "pretrain" / "metrics.jsonl")] == [1, 2, 3, 4]


def _logits(model, ids=((1, 5, 9, 12, 7),)):
    with torch.no_grad():
        return model.eval()(torch.tensor(ids)).logits


def test_a_run_loads_in_build_export_generate_and_init(workspace, trained, tmp_path):
    from minimind_spec.engine.export import load_model_files

    final = load_model_files(trained / "sft" / "final")
    built = CliRunner().invoke(app, ["build", str(workspace / "tiny.json"), "--weights", str(trained), "--out", str(tmp_path / "b")])
    assert built.exit_code == 0, built.output
    assert "they fit this spec" in built.output and (tmp_path / "b" / "tokenizer.json").is_file()
    assert torch.equal(_logits(load_model_files(tmp_path / "b")), _logits(final))  # the trained weights, not a new init

    checkpoint = trained / "pretrain" / "checkpoints" / "step-00000020"
    exported = CliRunner().invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "e")])
    assert exported.exit_code == 0, exported.output
    model = compile_graph(build_graph(resolve(load_spec(workspace / "tiny.json"))), seed=3)
    load_weights_into(model, checkpoint / "model.safetensors")
    assert torch.equal(_logits(load_model_files(tmp_path / "e")), _logits(model))
    assert (tmp_path / "e" / "tokenizer.json").is_file()  # found in the run's finished stages
    assert not any(p.name.startswith(".") for p in (tmp_path / "e").iterdir())  # no staging left behind

    said = CliRunner().invoke(app, ["generate", str(checkpoint), "the cat", "--no-chat", "--max-new-tokens", "4"])
    assert said.exit_code == 0 and said.stdout.strip(), said.output
    for flag, value, message in (("--temperature", "-1", "temperature must be >= 0"), ("--top-p", "0", "top_p must be in (0, 1]")):
        bad = CliRunner().invoke(app, ["generate", str(trained), "hi", flag, value])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output

    init = CliRunner().invoke(app, ["train", str(workspace / "tiny.json"), "--stage", "sft", "--init", str(trained / "pretrain"),
                                    "--sft-data", str(workspace / "sft.jsonl"), "--tokenizer", str(workspace / "tok"),
                                    "--out", str(tmp_path / "again"), "--max-steps", "1", "--no-progress"])
    assert init.exit_code == 0, init.output  # --init takes a stage directory: the same first SFT loss as the run's
    assert metrics(tmp_path / "again" / "sft" / "metrics.jsonl")[0]["loss"] == pytest.approx(
        metrics(trained / "sft" / "metrics.jsonl")[0]["loss"], rel=1e-6)

    other = json.loads((workspace / "tiny.json").read_text())
    other["hyperparams"]["n_layers"] = other["hyperparams"].get("n_layers", 2) + 1
    (tmp_path / "other.json").write_text(json.dumps(other))
    refused = CliRunner().invoke(app, ["build", str(tmp_path / "other.json"), "--weights", str(trained)])
    assert refused.exit_code == 2 and "n_layers" in refused.output and "Traceback" not in refused.output
    missing = CliRunner().invoke(app, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "no such" in missing.output


def test_fsdp_over_two_processes_matches_one_process_and_resumes(workspace, tmp_path):
    common = ["--stage", "pretrain", "--max-steps", "6", "--eval-every", "3", "--save-every", "3", "--deterministic"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(out, *extra):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "minimind_spec", *args(workspace, out, *common, "--fsdp", *extra)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return metrics(out / "pretrain" / "metrics.jsonl")

    single = subprocess.run([sys.executable, "-m", "minimind_spec", *args(workspace, tmp_path / "one", *common)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    one = metrics(tmp_path / "one" / "pretrain" / "metrics.jsonl")
    sharded = torchrun(tmp_path / "two")
    assert [row["step"] for row in sharded] == list(range(1, 7))
    for a, b in zip(one, sharded):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        assert ("eval_loss" in a) == ("eval_loss" in b) == (a["step"] % 3 == 0)  # every rank evaluates, rank 0 logs
        if "eval_loss" in a:
            assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5)
    final = compile_graph(build_graph(resolve(load_spec(workspace / "tiny.json"))), seed=5)
    load_weights_into(final, tmp_path / "two" / "pretrain" / "final" / "model.safetensors")  # gathered from the shards into the usual layout
    reference = compile_graph(build_graph(resolve(load_spec(workspace / "tiny.json"))), seed=5)
    load_weights_into(reference, tmp_path / "one" / "pretrain" / "final" / "model.safetensors")
    assert torch.allclose(_logits(final), _logits(reference), atol=1e-4)

    stage = tmp_path / "two" / "pretrain"  # back to the step-3 checkpoint, as if killed after it
    (stage / "latest").write_text("checkpoints/step-00000003\n")
    import shutil

    shutil.rmtree(stage / "checkpoints" / "step-00000006")
    shutil.rmtree(stage / "final")
    resumed = torchrun(tmp_path / "two", "--resume")
    assert [row["loss"] for row in resumed] == [row["loss"] for row in sharded]


def test_plan_probe_measures_each_runnable_stage(workspace):
    result = CliRunner().invoke(app, ["train", str(workspace / "tiny.json"), "--plan", "--probe", "--json", "--max-steps", "10",
                                      "--stage", "pretrain", "--stage", "sft"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    for stage in plan["stages"]:
        assert stage["tokens_per_s"] > 0 and stage["throughput_source"].startswith("probe")
        assert stage["wall_seconds"] == pytest.approx(stage["tokens"] / stage["tokens_per_s"])
    alone = CliRunner().invoke(app, ["train", str(workspace / "tiny.json"), "--probe"])
    assert alone.exit_code == 2 and "--plan" in alone.output


def test_compiled_training_matches_eager(workspace, tmp_path):
    losses = {}
    for name, extra in (("eager", ()), ("compiled", ("--compile",))):
        result = CliRunner().invoke(app, args(workspace, tmp_path / name, "--stage", "pretrain", "--max-steps", "3",
                                              "--eval-every", "0", *extra))
        assert result.exit_code == 0, result.output
        losses[name] = [row["loss"] for row in metrics(tmp_path / name / "pretrain" / "metrics.jsonl")]
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)


def test_ctrl_c_stops_the_whole_run_and_resume_finishes_every_stage(workspace, tmp_path):
    command = [sys.executable, "-m", "minimind_spec", *args(workspace, tmp_path / "run", "--max-steps", "40",
                                                            "--save-every", "1000", "--eval-every", "0")]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    _interrupt_after_3_steps(process, tmp_path / "run" / "pretrain" / "metrics.jsonl")
    assert "--resume continues it" in process.stderr.read().decode()
    assert not (tmp_path / "run" / "sft").exists()  # the next stage did not start from a missing final/
    resumed = CliRunner().invoke(app, args(workspace, tmp_path / "run", "--max-steps", "40", "--eval-every", "0", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert [len(metrics(tmp_path / "run" / kind / "metrics.jsonl")) for kind in ("pretrain", "sft")] == [40, 40]
    again = CliRunner().invoke(app, args(workspace, tmp_path / "run", "--max-steps", "40", "--eval-every", "0", "--resume"))
    assert again.exit_code == 0 and "no step ran" in again.output  # a finished run resumes to nothing, cleanly
