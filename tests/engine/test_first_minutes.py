"""What a new user sees in a first run on a CPU: one plain note (not a Python warning with its source
line) when the spec asks for flash-attn2 that cannot run here, the backend actually used in the
plan and in the stage's resolved.json, and, at the end, where the loss plots and the TensorBoard
events were written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from minimind_spec.cli import app

from ..conftest import ROOT
from .conftest import _has


def _flash_spec(workspace, tmp_path):
    spec = json.loads((workspace / "tiny.json").read_text())
    spec["tricks"] = ["flash-attn2"]
    path = tmp_path / "flash.json"
    path.write_text(json.dumps(spec))
    return path


def test_a_cpu_run_says_once_which_attention_runs_and_prints_no_python_warning(workspace, tmp_path):
    command = [sys.executable, "-m", "minimind_spec", "train", str(_flash_spec(workspace, tmp_path)), "--stage", "pretrain",
               "--stage", "sft", "--pretrain-data", str(workspace / "pretrain.jsonl"), "--sft-data", str(workspace / "sft.jsonl"),
               "--tokenizer", str(workspace / "tok"), "--out", str(tmp_path / "run"), "--max-steps", "2", "--no-progress",
               "--device", "cpu"]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": ""}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    said = done.stdout + done.stderr
    if not _has("flash_attn"):
        assert said.count("note: flash-attn2 is not installed here; attention uses PyTorch SDPA") == 1
    assert "Warning" not in said and "warnings.warn" not in said  # no Python warning, no source line
    resolved = json.loads((tmp_path / "run" / "sft" / "resolved.json").read_text())
    assert resolved["model.attention_backend"] == "flash-attn2" and resolved["model.attention_backend_used"] == "sdpa"
    if _has("matplotlib"):
        assert f"loss plots: {tmp_path / 'run' / 'pretrain' / 'loss.png'}, {tmp_path / 'run' / 'sft' / 'loss.png'}" in said
    if _has("tensorboard"):
        assert f"tensorboard --logdir {tmp_path / 'run'}" in said
        assert any((tmp_path / "run" / "sft" / "tensorboard").iterdir())


def test_the_plan_shows_the_attention_backend_that_will_run(workspace, tmp_path):
    result = CliRunner().invoke(app, ["train", str(_flash_spec(workspace, tmp_path)), "--plan", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    stages = json.loads(result.stdout)["stages"]
    assert all(s["attention"] == "sdpa" and "flash-attn2" in s["attention_note"] for s in stages)
    plain = CliRunner().invoke(app, ["train", str(workspace / "tiny.json"), "--plan", "--json"])
    stages = json.loads(plain.stdout)["stages"]
    assert all(s["attention"] == "sdpa" and s["attention_note"] is None for s in stages)  # it asks for SDPA and gets it
