"""The `minimind-spec` command: exit codes, messages, JSON output, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from minimind_spec.cli import app

from .conftest import CARD, ROOT, SPEC, needs_card

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


COMMANDS = {"validate", "explain", "schema", "build", "render", "diff", "train", "tokenizer", "generate", "export", "import", "lora",
            "ablate", "eval", "serve", "chat"}


def test_the_registered_commands_are_the_documented_ones():
    import typer

    group = typer.main.get_command(app)
    assert set(group.commands) == COMMANDS  # type: ignore[attr-defined]
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert command.get_short_help_str(), f"{name} has no help summary"


def test_validate_ok():
    result = run("validate", SPEC)
    assert result.exit_code == 0
    assert "valid" in result.output


def test_validate_json_lists_warnings():
    result = run("validate", SPEC, "--json")
    report = json.loads(result.stdout)
    assert report["valid"] is True
    assert any("trailing comma" in p["message"] for p in report["problems"])


@pytest.mark.parametrize("source", [SPEC, pytest.param(CARD, marks=needs_card)])
def test_build_prints_true_counts_and_warnings(source):
    result = run("build", source)
    assert result.exit_code == 0, result.output
    assert "31,203,840" in result.output
    assert "declared 14,000,000; compiled 31,203,840" in result.output
    assert "MLP/MoE declared 1,572,864" in result.output


def test_build_json_report():
    report = json.loads(run("build", SPEC, "--json").stdout)
    assert report["params"]["total"] == 31_203_840
    assert report["params"]["lora"] == 655_360
    assert report["kv_cache_bytes_per_token"] == 16_384
    assert len(report["declared_vs_compiled"]) == 8


def test_build_moe_variant():
    report = json.loads(run("build", SPEC, "--variant", "MoE", "--json").stdout)
    assert report["variant"] == "MoE" and report["op_counts"]["router"] == 8


def test_build_strict_exits_2():
    result = run("build", SPEC, "--strict")
    assert result.exit_code == 2
    assert "/total_params/all" in result.output


def test_build_out_writes_resolved_and_graph(tmp_path):
    result = run("build", SPEC, "--out", tmp_path, "--device", "meta")
    assert result.exit_code == 0, result.output
    resolved = json.loads((tmp_path / "resolved.json").read_text())
    assert resolved["values"]["model.d_model"] == {"value": 512, "provenance": "spec:/hyperparams/d_model"}
    graph = json.loads((tmp_path / "graph.json").read_text())
    assert {n["id"] for n in graph["nodes"]} >= {"model.embed_tokens", "lm_head"}
    assert any(e["kind"] == "residual" for e in graph["edges"])


def test_explain_shows_provenance():
    result = run("explain", SPEC, "--json")
    values = json.loads(result.stdout)["values"]
    assert values["model.mlp_hidden"] == {"value": 1536, "provenance": "derived: mlp_ratio x d_model"}
    assert values["training.optim.lr"]["provenance"] == "spec:/optim/lr"
    assert values["training.optim.max_steps"]["provenance"] == "default"
    text = run("explain", SPEC)
    assert text.exit_code == 0 and "provenance" in text.output


def test_schema_check_agrees_with_committed_file():
    result = run("schema", "--check", "--out", ROOT / "spec" / "minimind.schema.json")
    assert result.exit_code == 0, result.output


def test_schema_writes_a_file(tmp_path):
    out = tmp_path / "s.json"
    assert run("schema", "--out", out).exit_code == 0
    assert json.loads(out.read_text())["title"] == "MiniMind architecture spec"


BAD_INPUTS = {
    "missing": None,
    "empty": b"",
    "binary": b"\x00\x00\x01",
    "utf8": b"\xff\xfe{}",
    "syntax": b'{"model_name": }',
    "types": json.dumps({"model_name": 3, "task": "Causal Language Modeling"}).encode(),
    "unknown": json.dumps({"model_nam": "x"}).encode(),
    "card": b"# card with no json\n",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("command", ["validate", "build", "explain"])
def test_bad_input_exits_2_without_traceback(tmp_path, case, command):
    path = tmp_path / ("card.md" if case == "card" else "spec.json")
    if BAD_INPUTS[case] is not None:
        path.write_bytes(BAD_INPUTS[case])
    result = run(command, path)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_directory_and_cycle_exit_2(tmp_path):
    assert run("validate", tmp_path).exit_code == 2
    (tmp_path / "a.json").write_text(json.dumps({"extends": "a.json"}))
    result = run("validate", tmp_path / "a.json")
    assert result.exit_code == 2 and "extends cycle" in result.output


def test_unknown_variant_exits_2():
    result = run("build", SPEC, "--variant", "Mamba")
    assert result.exit_code == 2 and "not offered" in result.output


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "minimind_spec", "validate", str(SPEC)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", [
    ["render", str(SPEC), "-o", "{dir}"],
    ["build", str(SPEC), "--out", "{file}"],
    ["schema", "--out", "{dir}"],
    ["build", str(SPEC), "--out", "{dir}/x", "--device", "cuda"],
])
def test_unwritable_outputs_and_missing_devices_exit_2(tmp_path, command):
    import torch

    if "cuda" in command and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "file").write_text("x")
    args = [a.format(dir=tmp_path, file=tmp_path / "file") for a in command]
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "error" in result.output
    assert not (tmp_path / "x").exists()  # a failed build leaves no half-written output directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # and no staging directory either


def test_unknown_device_is_rejected_by_the_option():
    assert run("build", SPEC, "--out", "x", "--device", "tpu").exit_code == 2


def test_schema_default_is_beside_the_shipped_spec_not_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("schema", "--check")
    assert result.exit_code == 0, result.output  # it found ROOT/spec/minimind.schema.json from elsewhere
    assert str(ROOT / "spec" / "minimind.schema.json") in result.output.replace("\n", "")
    assert not (tmp_path / "spec").exists()


@pytest.mark.parametrize("args", [
    ["build", str(SPEC), "--seed", "99999999999999999999"],
    ["build", str(SPEC), "--seed", "-1"],
    ["train", str(SPEC), "--plan", "--eval-every", "-1"],
    ["train", str(SPEC), "--plan", "--micro-batch", "0"],
    ["tokenizer", "train", str(SPEC), "--out", "x", "--vocab-size", "0"],
])
def test_numeric_options_are_bounded(args):
    result = run(*args)
    assert result.exit_code == 2 and "Invalid value" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("command", sorted(COMMANDS - {"tokenizer", "lora"}) + ["tokenizer train", "lora merge"])
def test_help_teaches_without_noise(command):
    result = run(*command.split(), "--help")
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output  # flags take no value: no type shown
    if command == "tokenizer train":
        assert "<think> = 3" in result.output and "</think> = 4" in result.output  # not swallowed as markup


def test_o_means_the_output_everywhere():
    import typer.main

    command = typer.main.get_command(app)
    seen = {}

    def walk(group, prefix):
        for name, sub in getattr(group, "commands", {}).items():
            walk(sub, f"{prefix} {name}".strip())
        for param in getattr(group, "params", []):
            if param.param_type_name == "option" and "-o" in param.opts:
                seen[prefix] = param.opts

    walk(command, "")
    assert seen and all("--out" in opts for opts in seen.values()), seen


@pytest.mark.parametrize("columns", ["80", "200"])
def test_explain_never_cuts_a_field_name(columns):
    import os
    import subprocess
    import sys

    names = list(json.loads(run("explain", SPEC, "--variant", "MoE", "--json").stdout)["values"])
    done = subprocess.run([sys.executable, "-m", "minimind_spec", "explain", str(SPEC), "--variant", "MoE"], cwd=ROOT,
                          env={**os.environ, "COLUMNS": columns}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(names) > 50
    for name in names:
        assert name in done.stdout, name


def test_build_refuses_weights_that_cannot_fit_and_meta_stays_unlimited(tmp_path):
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"extends": str(SPEC), "hyperparams": {"d_model": 65536, "n_heads": 64, "n_layers": 64}}))
    refused = run("build", huge, "--out", tmp_path / "out")
    assert refused.exit_code == 2 and "GiB (fp32, twice) but cpu has" in refused.output and "GiB free" in refused.output
    assert not (tmp_path / "out").exists()
    assert run("build", huge, "--out", tmp_path / "meta", "--device", "meta").exit_code == 0


def test_render_says_what_is_missing_or_too_large(tmp_path, monkeypatch):
    import minimind_spec.cli.render_commands as render_commands
    import minimind_spec.render.html as html

    monkeypatch.setattr(html, "find_mermaid_js", lambda: None)
    page = run("render", SPEC, "--format", "html", "-o", tmp_path / "page.html")
    assert page.exit_code == 0 and "mermaid.js was not found" in page.output and "npm ci" in page.output
    monkeypatch.setattr(render_commands, "LARGE_DRAWING_BYTES", 1000)
    big = run("render", SPEC, "--expand", "-o", tmp_path / "big.mmd")
    assert big.exit_code == 0 and "MiB" in big.output and "drop --expand" in big.output
