"""The study's design: scaled specs, pairing, families, first changed stage, claims, and run keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minimind_spec.errors import InputError
from minimind_spec.study.design import design_study, family_of, first_changed_stage, scaled_documents, teacher_spec
from minimind_spec.study.task import load_task
from minimind_spec.study.runs import plan_runs

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "spec" / "minimind.json"
ABLATIONS = sorted((ROOT / "spec" / "ablations").glob("*.json"))
TASK = ROOT / "examples" / "reasoning"


@pytest.fixture(scope="module")
def designed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("study")
    return {a.name: a for a in design_study(BASE, ABLATIONS, load_task(TASK), out)} | {"_out": out}


def test_each_shipped_ablation_gets_its_family_stage_and_pairing(designed: dict) -> None:
    expected = {  # name: (family, first stage it trains, stage measured after, variant of both sides)
        "lora_rank4": ("lora", "sft", "sft", None), "layernorm": ("norm", "pretrain", "pretrain", None),
        "absolute_pe": ("positional", "pretrain", "pretrain", None), "moe_no_aux_loss": ("moe", "pretrain", "pretrain", "MoE"),
        "no_reasoning_masking": ("distill", "distill", "distill", None), "dpo_beta_0.5": ("dpo", "dpo", "dpo", None),
    }
    for name, (family, first, measured, variant) in expected.items():
        a = designed[name]
        assert (a.family.name, a.first_stage, a.family.measured_after, a.variant) == (family, first, measured, variant), name
        assert len(a.changes) == 1, a.changes  # each changes exactly one resolved value at the study's dimensions
    assert designed["lora_rank4"].changes == ('model.lora.rank: 8 -> 4',)
    assert designed["moe_no_aux_loss"].base_spec.name == "base@MoE.json"


def test_scaled_specs_are_the_task_dimensions_with_the_ablation_kept(designed: dict) -> None:
    spec = json.loads(designed["layernorm"].spec.read_text())
    assert spec["hyperparams"]["d_model"] == 128 and spec["backbone"]["norm"] == "LayerNorm"
    base = json.loads(designed["layernorm"].base_spec.read_text())
    assert base["backbone"]["norm"] == "RMSNorm" and base["hyperparams"]["vocab"] == 384


def test_a_scale_value_never_overwrites_what_the_ablation_changes(tmp_path: Path) -> None:
    ablation = tmp_path / "wide.json"
    ablation.write_text(json.dumps({"extends": str(BASE), "ablation": {"name": "wide", "expected_effect": "wider"},
                                    "hyperparams": {"d_model": 768}}))
    base_doc, ablation_doc, kept = scaled_documents(BASE, ablation, {"hyperparams": {"d_model": 128, "n_layers": 4}})
    assert base_doc["hyperparams"]["d_model"] == 128 and base_doc["hyperparams"]["n_layers"] == 4
    assert ablation_doc["hyperparams"]["d_model"] == 768 and ablation_doc["hyperparams"]["n_layers"] == 4
    assert kept == ["/hyperparams/d_model"]


def test_family_and_first_stage_from_changed_keys() -> None:
    assert family_of(["model.moe.aux_loss"]) == "moe" and first_changed_stage(["model.moe.aux_loss"]) == "pretrain"
    assert family_of(["training.dpo.beta"]) == "dpo" and first_changed_stage(["training.dpo.beta"]) == "dpo"
    assert first_changed_stage(["model.lora.rank"]) == "sft" and first_changed_stage(["training.optim.lr"]) == "pretrain"
    assert family_of(["model.d_model"]) == "other"


def test_claims_point_the_way_the_change_goes(designed: dict) -> None:
    lora = {c.metric: c.expected for c in designed["lora_rank4"].claims}
    assert lora == {"trainable_share": -1, "answer_loss": 1, "exact_match": -1, "step_seconds": -1}
    dpo = {c.metric: c.expected for c in designed["dpo_beta_0.5"].claims}
    assert dpo["preference_accuracy"] == 1 and dpo["divergence_warnings"] == 1


def test_a_spec_without_an_ablation_block_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no \"ablation\" block"):
        design_study(BASE, [BASE], load_task(TASK), tmp_path)


def test_runs_share_the_base_prefix_and_are_keyed_by_what_decides_them(designed: dict) -> None:
    out = designed["_out"]
    ablations = [a for n, a in designed.items() if n != "_out"]
    task = load_task(TASK)
    quick = task.budget("quick")
    runs = plan_runs(ablations, quick, teacher_spec(task, out), out, "data0")
    # the base trains every stage (DPO is measured after dpo); the DPO ablation starts from the base's distill stage
    assert [s for (arm, s, _) in runs.runs if arm == "base"] == ["pretrain", "sft", "distill", "dpo"]
    assert runs.get("dpo_beta_0.5", "dpo", 0).init is runs.get("base", "distill", 0)
    assert runs.get("lora_rank4", "sft", 0).init is runs.get("base", "pretrain", 0)
    assert runs.get("no_reasoning_masking", "distill", 0).teacher is runs.get("teacher", "sft", 0)
    assert [s for (arm, s, _) in runs.runs if arm == "base@MoE"] == ["pretrain"]
    order = runs.ordered()
    assert all(order.index(r.init) < order.index(r) for r in order if r.init is not None)
    # keys: the same inputs give the same key; another seed, budget or data another
    again = plan_runs(ablations, quick, teacher_spec(task, out), out, "data0")
    assert again.get("base", "dpo", 0).key == runs.get("base", "dpo", 0).key
    other_data = plan_runs(ablations, quick, teacher_spec(task, out), out, "data1")
    assert other_data.get("base", "dpo", 0).key != runs.get("base", "dpo", 0).key
    full = plan_runs(ablations, task.budget("full"), teacher_spec(task, out), out, "data0")
    assert full.get("base", "pretrain", 0).key != runs.get("base", "pretrain", 0).key
    assert full.get("base", "pretrain", 1).key != full.get("base", "pretrain", 0).key


def _ablation(tmp_path: Path, name: str, patch: dict) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"extends": str(BASE), "ablation": {"name": name, "expected_effect": "something"}, **patch}))
    return path


def test_no_claims_when_the_value_the_claims_are_about_does_not_change(tmp_path: Path) -> None:
    paths = [_ablation(tmp_path, "alpha", {"techniques": {"lora": {"alpha": 64}}}),
             _ablation(tmp_path, "dpo_hinge", {"techniques": {"dpo": {"loss": "hinge"}}})]
    designed = {a.name: a for a in design_study(BASE, paths, load_task(TASK), tmp_path / "out")}
    assert designed["alpha"].family.name == "lora" and designed["alpha"].claims == ()
    assert designed["dpo_hinge"].family.name == "dpo" and designed["dpo_hinge"].claims == ()


def test_an_ablation_is_measured_no_earlier_than_the_first_stage_it_changes(tmp_path: Path) -> None:
    path = _ablation(tmp_path, "epochs", {"techniques": {"sft": {"epochs": 1}}})
    (ablation,) = design_study(BASE, [path], load_task(TASK), tmp_path / "out")
    assert ablation.family.name == "other" and ablation.first_stage == "sft"
    assert ablation.measured_after == "sft" and ablation.stages == ("sft",)


@pytest.mark.parametrize("name", ["base", "teacher", "base@MoE", "../escape", "a b"])
def test_names_that_would_collide_with_the_study_or_leave_its_directory_are_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "named.json"
    path.write_text(json.dumps({"extends": str(BASE), "ablation": {"name": name, "expected_effect": "x"}}))
    with pytest.raises(InputError, match="ablation name"):
        design_study(BASE, [path], load_task(TASK), tmp_path / "out")


def test_a_run_is_finished_only_when_its_last_step_and_final_model_are_written(designed: dict, tmp_path: Path) -> None:
    from minimind_spec.study.runs import StageRun, finished

    run = StageRun("base", designed["layernorm"].base_spec, None, "pretrain", 0, 5, "d", root=tmp_path)
    run.metrics.parent.mkdir(parents=True)
    run.metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0, "lr": 1e-3, "tokens": 64 * s}) + "\n" for s in range(1, 4)))
    assert not finished(run)  # interrupted at step 3 of 5: a checkpoint, no final model
    run.final.mkdir(parents=True)
    (run.final / "model.safetensors").write_bytes(b"")
    assert not finished(run)  # still step 3
    run.metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0, "lr": 1e-3, "tokens": 64 * s}) + "\n" for s in range(1, 6)))
    assert finished(run)


def test_a_change_in_a_file_the_teacher_extends_retrains_the_teacher(designed: dict, tmp_path: Path) -> None:
    import dataclasses

    from minimind_spec.study.runs import StageRun

    parent = tmp_path / "parent.json"
    parent.write_text((ROOT / "spec" / "larger_model.json").read_text())
    child = tmp_path / "teacher.json"
    child.write_text(json.dumps({**json.loads((TASK / "teacher.json").read_text()), "extends": "parent.json"}))
    task = dataclasses.replace(load_task(TASK), teacher_spec=child)

    def key() -> str:
        return StageRun("teacher", teacher_spec(task, tmp_path / "out"), None, "pretrain", 0, 5, "d").key

    before = key()
    assert key() == before
    parent.write_text(parent.read_text() + "\n ")  # whitespace only: the same merged spec, the same key
    assert key() == before
    document = json.loads((ROOT / "spec" / "larger_model.json").read_text())
    document.setdefault("regularization", {})["weight_decay"] = 0.05
    parent.write_text(json.dumps(document))
    assert key() != before


def test_the_scaled_specs_name_the_teacher_beside_them(designed: dict) -> None:
    spec = json.loads(designed["no_reasoning_masking"].spec.read_text())
    assert spec["techniques"]["distill"]["teacher_spec"] == "teacher.json"
    assert (designed["no_reasoning_masking"].spec.parent / "teacher.json").is_file()
