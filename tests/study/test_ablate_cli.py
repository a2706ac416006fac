"""`minimind-spec ablate` end to end on a tiny task: report, verdicts, plots, and a rerun that trains nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from minimind_spec.cli import app

ROOT = Path(__file__).resolve().parents[2]
TASK = Path(__file__).resolve().parent / "tiny_task"
ABLATIONS = [ROOT / "spec" / "ablations" / "layernorm.json", ROOT / "spec" / "ablations" / "lora_rank4.json"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The tiny study, two runs at a time (--jobs 2: runs wait for the runs they start from)."""
    out = tmp_path_factory.mktemp("ablate") / "study"
    result = CliRunner().invoke(app, ["ablate", str(ROOT / "spec" / "minimind.json"), *map(str, ABLATIONS), "--task", str(TASK),
                                      "--quick", "--jobs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_the_report_has_every_claim_with_a_verdict(study: tuple[Path, str]) -> None:
    out, output = study
    report = json.loads((out / "report.json").read_text())
    assert [a["name"] for a in report["ablations"]] == ["layernorm", "lora_rank4"]
    for ablation in report["ablations"]:
        assert ablation["claims"] and all(c["verdict"] in ("confirmed", "not observed", "contradicted")
                                          for c in ablation["claims"])
    lora = {c["metric"]: c for c in report["ablations"][1]["claims"]}
    # the trainable share is exact, from the plan: rank 8 vs 4 on all seven projections of 2 layers
    assert lora["trainable_share"]["verdict"] == "confirmed" and lora["trainable_share"]["noise"] == 0
    norm = {c["metric"]: c for c in report["ablations"][0]["claims"]}
    # one more float32 per token in each of the 5 norms (the LayerNorm mean): +20 bytes per token
    assert norm["norm_saved_bytes_per_token"]["difference"] == 20 and norm["norm_saved_bytes_per_token"]["verdict"] == "confirmed"
    markdown = (out / "report.md").read_text()
    assert "Replace RMSNorm with LayerNorm" in markdown and "| claim | metric | base | ablation |" in markdown
    assert "layernorm:" in output and "report:" in output


def test_plots_are_written(study: tuple[Path, str]) -> None:
    pytest.importorskip("matplotlib")
    out, _ = study
    names = {p.name for p in (out / "plots").glob("*.png")}
    assert {"layernorm_loss.png", "layernorm_metrics.png", "layernorm_context.png", "lora_rank4_loss.png"} <= names


def test_a_rerun_trains_nothing(study: tuple[Path, str]) -> None:
    out, _ = study
    before = {p: p.stat().st_mtime for p in (out / "runs").glob("*/done.json")}
    result = CliRunner().invoke(app, ["ablate", str(ROOT / "spec" / "minimind.json"), *map(str, ABLATIONS), "--task",
                                      str(TASK), "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.count("done before") == len(before) == 4  # base pretrain, sft; layernorm pretrain; lora_rank4 sft
    assert {p: p.stat().st_mtime for p in (out / "runs").glob("*/done.json")} == before


def test_bad_input_is_reported_without_a_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["ablate", str(ROOT / "spec" / "minimind.json"), str(ABLATIONS[0]), "--task", str(tmp_path)])
    assert result.exit_code == 2 and "no task.json" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["ablate", str(ROOT / "spec" / "minimind.json"), str(ROOT / "spec" / "minimind.json"),
                                 "--task", str(TASK), "--dry-run", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no \"ablation\" block" in result.output


def test_dry_run_shows_the_design(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["ablate", str(ROOT / "spec" / "minimind.json"), *map(str, ABLATIONS), "--task", str(TASK),
                                      "--dry-run", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "lora_rank4 (lora; vs base): trains sft, measured after sft" in result.output
    # per seed of the full budget (0, 1): base pretrain and sft, layernorm's pretrain, lora_rank4's sft
    assert ("8 training runs, 0 done: base pretrain s0, base sft s0, layernorm pretrain s0, lora_rank4 sft s0, "
            "base pretrain s1") in result.output
