"""Validation: schema errors with JSON paths and suggestions, editor parity, cross-field rules."""

from __future__ import annotations

import copy
import json

import pytest

from minimind_spec import SpecError, load_spec
from minimind_spec.validate import json_schema, model_problems, schema_problems

from .conftest import ROOT, TINY, card_data


def problems_of(write_spec, **changes) -> list:
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(**changes))
    return info.value.problems


def paths(problems) -> set[str]:
    return {p.path for p in problems}


def test_every_shipped_spec_validates():
    shipped = sorted((ROOT / "spec").rglob("*.json"))
    shipped = [p for p in shipped if not p.name.endswith(".schema.json")]
    assert len(shipped) >= 2
    for path in shipped:
        load_spec(path)


def test_committed_schema_is_fresh():
    committed = json.loads((ROOT / "spec" / "minimind.schema.json").read_text(encoding="utf-8"))
    assert committed == json_schema(), "spec/minimind.schema.json is stale: run `minimind-spec schema`"


def test_misspelled_key_suggests_the_right_one(write_spec):
    doc = copy.deepcopy(TINY)
    doc["hyperparams"]["d_modle"] = doc["hyperparams"].pop("d_model")
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(doc))
    problems = info.value.problems
    by_path = {p.path: p for p in problems}
    assert "unknown key 'd_modle'" in by_path["/hyperparams/d_modle"].message
    assert by_path["/hyperparams/d_modle"].hint == "did you mean 'd_model'?"
    assert "/hyperparams/d_model" in by_path  # and the real key is reported missing


def test_misspelled_choice_suggests_the_right_one(write_spec):
    problems = problems_of(write_spec, backbone={"norm": "RMSnorm"})
    (problem,) = [p for p in problems if p.path == "/backbone/norm"]
    assert problem.hint == "did you mean 'RMSNorm'?"


def test_all_problems_are_reported_at_once(write_spec):
    problems = problems_of(
        write_spec,
        hyperparams={"d_model": "512", "n_layers": -1, "dropout": 1.5},
        optim={"lr": 0},
        tricks=["flash-attn3"],
        model_name="",
    )
    assert {"/hyperparams/d_model", "/hyperparams/n_layers", "/hyperparams/dropout", "/optim/lr", "/tricks/0",
            "/model_name"} <= paths(problems)


def test_strings_are_not_coerced_to_numbers(write_spec):
    assert "/hyperparams/vocab" in paths(problems_of(write_spec, hyperparams={"vocab": "128"}))


def test_conv_fields_must_be_null(write_spec):
    problems = problems_of(write_spec, hyperparams={"kernel": 3})
    assert any(p.path == "/hyperparams/kernel" and "must be null" in p.message for p in problems)


def test_discriminated_rope_scaling_error_points_into_the_document(write_spec):
    problems = problems_of(write_spec, hyperparams={"rope_scaling": {"type": "yarn", "factor": 0.5}})
    assert "/hyperparams/rope_scaling/factor" in paths(problems)


def test_whitespace_only_string_is_rejected(write_spec):
    assert "/model_name" in paths(problems_of(write_spec, model_name="   "))


BAD_DOCUMENTS = [
    {"hyperparams": {"d_model": "x"}},
    {"hyperparams": {"n_heads": 0}},
    {"hyperparams": {"dropout": -0.1}},
    {"backbone": {"norm": "BatchNorm"}},
    {"backbone": {"colour": "red"}},
    {"optim": {"betas": [0.9]}},
    {"optim": {"scheduler": "cosinus"}},
    {"techniques": {"lora": {"rank": 0}}},
    {"tricks": ["nope"]},
    {"total_params": {"all": -5}},
    {"model_name": ""},
]


@pytest.mark.parametrize("change", BAD_DOCUMENTS)
def test_editor_schema_and_cli_flag_the_same_places(change):
    doc = copy.deepcopy(TINY)
    for key, value in change.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    _, pydantic_problems = model_problems(doc)
    editor = paths(schema_problems(doc))
    assert pydantic_problems and editor
    for path in editor:
        assert any(p.path == path or p.path.startswith(path + "/") or path.startswith(p.path + "/") for p in pydantic_problems), path


def test_the_shipped_spec_passes_the_json_schema():
    assert schema_problems(card_data()) == []


# ----- cross-field rules, one test each -----

def test_d_model_must_divide_by_heads(write_spec):
    problems = problems_of(write_spec, hyperparams={"n_heads": 5})
    assert any(p.path == "/hyperparams/n_heads" and "not divisible" in p.message for p in problems)


def test_heads_must_divide_by_kv_heads(write_spec):
    problems = problems_of(write_spec, hyperparams={"n_kv_heads": 3})
    assert any(p.path == "/hyperparams/n_kv_heads" for p in problems)


def test_odd_head_dim_with_rope(write_spec):
    problems = problems_of(write_spec, hyperparams={"d_model": 60, "n_heads": 4})  # head_dim 15
    assert any("odd" in p.message for p in problems)


def test_each_bad_lora_placement_is_reported(write_spec):
    lora = {"enabled": True, "placements": ["q_proj", "qproj", "w1", "v_proj"]}
    problems = problems_of(write_spec, techniques={"lora": lora})
    assert paths(problems) == {"/techniques/lora/placements/1", "/techniques/lora/placements/2"}
    assert next(p for p in problems if p.path.endswith("/1")).hint == "did you mean 'q_proj'?"


def test_lora_enabled_without_placements(write_spec):
    assert "/techniques/lora/placements" in paths(problems_of(write_spec, techniques={"lora": {"enabled": True}}))


def test_top_k_above_num_experts(write_spec):
    assert "/moe/top_k" in paths(problems_of(write_spec, moe={"num_experts": 4, "top_k": 5}))


def test_teacher_with_another_vocab(write_spec, tmp_path):
    teacher = copy.deepcopy(TINY)
    teacher["hyperparams"]["vocab"] = 256
    (tmp_path / "teacher.json").write_text(json.dumps(teacher), encoding="utf-8")
    distill = {"enabled": True, "teacher": "teacher"}
    problems = problems_of(write_spec, techniques={"distill": distill})
    (problem,) = problems
    assert problem.path == "/techniques/distill/teacher"
    assert "256" in problem.message and "128" in problem.message


def test_teacher_with_same_vocab_is_accepted(write_spec, tmp_path):
    (tmp_path / "teacher.json").write_text(json.dumps(TINY), encoding="utf-8")
    spec = load_spec(write_spec(techniques={"distill": {"enabled": True, "teacher": "teacher"}}))
    assert not any("teacher" in w.path for w in spec.origin.warnings)


def test_explicit_teacher_spec_that_is_missing(write_spec):
    distill = {"enabled": True, "teacher_spec": "missing.json"}
    assert "/techniques/distill/teacher_spec" in paths(problems_of(write_spec, techniques={"distill": distill}))


def test_warmup_longer_than_the_run(write_spec):
    assert "/optim/warmup" in paths(problems_of(write_spec, optim={"warmup": 100, "max_steps": 50}))


def test_quant_enabled_with_empty_scheme(write_spec):
    assert "/techniques/quant/scheme" in paths(problems_of(write_spec, techniques={"quant": {"enabled": True}}))


def test_sft_enabled_without_datasets(write_spec):
    assert "/techniques/sft/datasets" in paths(problems_of(write_spec, techniques={"sft": {"enabled": True}}))


def test_contradicting_backend_and_trick(write_spec):
    backbone = {**TINY["backbone"], "attention_backend": "eager"}
    assert "/backbone/attention_backend" in paths(problems_of(write_spec, backbone=backbone, tricks=["flash-attn2"]))


def test_aux_loss_off_while_trick_on(write_spec):
    assert "/moe/aux_loss" in paths(problems_of(write_spec, moe={"aux_loss": False}, tricks=["moe-aux-loss"]))


def test_rope_scaling_without_rope(write_spec):
    backbone = {**TINY["backbone"], "positional_encoding": "Absolute"}
    problems = problems_of(write_spec, backbone=backbone, hyperparams={"rope_scaling": {"type": "linear", "factor": 2.0}})
    assert "/hyperparams/rope_scaling" in paths(problems)


def test_distill_layer_out_of_range(write_spec):
    distill = {"layers": [0, 7]}
    assert "/techniques/distill/layers/1" in paths(problems_of(write_spec, techniques={"distill": distill}))


def test_max_positions_shorter_than_seq_len(write_spec):
    assert "/hyperparams/max_position_embeddings" in paths(problems_of(write_spec, hyperparams={"max_position_embeddings": 8}))


def test_rope_scaling_trick_without_config_is_a_warning():
    spec = load_spec(ROOT / "spec" / "minimind.json")
    assert any(w.path == "/tricks" and "rope-scaling" in w.message for w in spec.origin.warnings)


def test_absurd_sizes_are_rejected_before_building(write_spec):
    problems = problems_of(write_spec, hyperparams={"n_layers": 10**9}, moe={"num_experts": 10**6})
    assert {"/hyperparams/n_layers", "/moe/num_experts"} <= paths(problems)


def test_type_errors_and_rule_violations_are_reported_in_one_run(write_spec):
    lora = {"enabled": True, "placements": ["q_proj", "qproj"]}
    problems = problems_of(write_spec, backbone={"norm": "RMSnorm"}, hyperparams={"n_heads": 5, "dropout": "0.1"},
                           techniques={"lora": lora})
    assert {"/backbone/norm", "/hyperparams/dropout", "/hyperparams/n_heads", "/techniques/lora/placements/1"} == paths(problems)


def test_rule_findings_next_to_a_broken_field_are_not_invented(write_spec):
    # placements has the wrong type: the rule "LoRA enabled without placements" must not fire on the stand-in default
    problems = problems_of(write_spec, techniques={"lora": {"enabled": True, "placements": "q_proj"}})
    assert paths(problems) == {"/techniques/lora/placements"}
    assert "valid list" in problems[0].message or "array" in problems[0].message


def test_mlp_with_no_hidden_units(write_spec):
    assert "/hyperparams/mlp_ratio" in paths(problems_of(write_spec, hyperparams={"mlp_ratio": 0.001}))


def test_yarn_betas_in_the_wrong_order(write_spec):
    scaling = {"type": "yarn", "factor": 4.0, "beta_fast": 1.0, "beta_slow": 32.0}
    assert "/hyperparams/rope_scaling/beta_fast" in paths(problems_of(write_spec, hyperparams={"rope_scaling": scaling}))


def test_context_past_the_position_cap(write_spec):
    scaling = {"type": "linear", "factor": 1024.0}
    problems = problems_of(write_spec, hyperparams={"seq_len": 1_048_576, "rope_scaling": scaling})
    assert "/hyperparams/rope_scaling/factor" in paths(problems)


def test_full_rank_lora_is_a_warning(write_spec):
    spec = load_spec(write_spec(techniques={"lora": {"enabled": True, "placements": ["q_proj"], "rank": 64}}))
    assert any(w.path == "/techniques/lora/rank" for w in spec.origin.warnings)


@pytest.mark.parametrize("spelling", ["type", "rope_type", "kind"])
def test_rope_scaling_takes_the_spellings_of_other_tools(write_spec, spelling):
    from minimind_spec import resolve

    hyperparams = {**TINY["hyperparams"], "rope_scaling": {spelling: "linear", "factor": 2.0}}
    resolved = resolve(load_spec(write_spec(hyperparams=hyperparams)))
    assert resolved.model.rope_scaling.kind == "linear" and resolved.model.rope_scaling.factor == 2.0


@pytest.mark.parametrize("scaling, expected", [
    ({"type": "lineer", "factor": 2.0}, ("/hyperparams/rope_scaling/type", "'lineer' is not allowed", "did you mean 'linear'?")),
    ({"factor": 2.0}, ("/hyperparams/rope_scaling", "missing the key 'type'", "one of: 'none', 'linear', 'ntk', 'yarn'")),
])
def test_rope_scaling_type_errors_read_like_the_others(write_spec, scaling, expected):
    found = problems_of(write_spec, hyperparams={**TINY["hyperparams"], "rope_scaling": scaling})
    assert [(p.path, p.message.split(" (")[0], p.hint) for p in found] == [expected]


def test_top1_routing_with_renormalised_weights_is_accepted_with_its_consequence_and_derived_off_by_default(write_spec):
    from minimind_spec import resolve

    spec = load_spec(write_spec(moe={"num_experts": 4, "top_k": 1, "norm_topk_prob": True, "aux_loss": True}))
    (found,) = [w for w in spec.origin.warnings if w.path == "/moe/norm_topk_prob"]
    assert "no gradient" in found.message and "aux loss alone" in found.message  # MiniMind-3's MoE loads, warned
    assert resolve(spec, "MoE").model.moe.norm_topk_prob is True
    without_aux = load_spec(write_spec(moe={"num_experts": 4, "top_k": 1, "norm_topk_prob": True, "aux_loss": False}))
    assert any("never learns" in w.message for w in without_aux.origin.warnings if w.path == "/moe/norm_topk_prob")
    resolved = resolve(load_spec(write_spec(moe={"num_experts": 4, "top_k": 1})), "MoE")
    assert resolved.model.moe.norm_topk_prob is False
    assert resolved.provenance["model.moe.norm_topk_prob"].startswith("derived: top_k 1")


def test_head_dim_qk_norm_and_an_explicit_mlp_size_resolve_with_their_provenance(write_spec):
    from minimind_spec import resolve

    hyper = {**TINY["hyperparams"], "n_heads": 8, "head_dim": 12, "qk_norm": True, "mlp_hidden": 176}
    hyper.pop("mlp_ratio")
    resolved = resolve(load_spec(write_spec({**TINY, "hyperparams": hyper})))
    m = resolved.model
    assert (m.head_dim, m.qk_norm, m.mlp_hidden) == (12, True, 176)
    assert resolved.provenance["model.head_dim"] == "spec:/hyperparams/head_dim"
    assert resolved.provenance["model.mlp_hidden"] == "spec:/hyperparams/mlp_hidden"
    plain = resolve(load_spec(write_spec()))
    assert (plain.model.head_dim, plain.model.qk_norm) == (16, False)  # d_model 64 / 4 heads
    assert plain.provenance["model.head_dim"] == "derived: d_model / n_heads"


def test_mlp_size_must_be_given_once_or_agree_and_head_dim_frees_the_divisibility(write_spec):
    both = {**TINY["hyperparams"], "mlp_ratio": 3.0, "mlp_hidden": 100}
    (found,) = [p for p in problems_of(write_spec, hyperparams=both) if p.path == "/hyperparams/mlp_hidden"]
    assert "100" in found.message and "192" in found.message
    neither = {k: v for k, v in TINY["hyperparams"].items() if k != "mlp_ratio"}
    with pytest.raises(SpecError) as info:
        load_spec(write_spec({**TINY, "hyperparams": neither}))
    assert "/hyperparams/mlp_ratio" in paths(info.value.problems)
    agreeing = {**TINY["hyperparams"], "mlp_ratio": 3.0, "mlp_hidden": 192}
    load_spec(write_spec(hyperparams=agreeing))
    odd_heads = {**TINY["hyperparams"], "n_heads": 6}  # 64 % 6 != 0 ...
    assert "/hyperparams/n_heads" in paths(problems_of(write_spec, hyperparams=odd_heads))
    load_spec(write_spec(hyperparams={**odd_heads, "n_kv_heads": 3, "head_dim": 10}))  # ... unless head_dim is given
    assert "/hyperparams/head_dim" in paths(problems_of(write_spec, hyperparams={**odd_heads, "head_dim": 9}))  # odd for RoPE


def test_missing_and_mistyped_required_fields_do_not_hide_the_cross_field_rules(write_spec):
    spec = copy.deepcopy(TINY)
    del spec["task"]  # missing
    spec["hyperparams"] = {**spec["hyperparams"], "n_layers": "2", "n_heads": 6}  # mistyped; 64 % 6 != 0
    spec["moe"] = {"num_experts": 2, "top_k": 3}
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(spec))
    found = info.value.problems
    assert paths(found) == {"/task", "/hyperparams/n_layers", "/hyperparams/n_heads", "/moe/top_k"}
    assert any("not divisible by n_heads 6" in p.message for p in found)


def test_a_rule_about_a_missing_field_is_not_invented(write_spec):
    spec = copy.deepcopy(TINY)
    del spec["hyperparams"]["d_model"]  # n_heads cannot be checked against it
    spec["hyperparams"]["n_heads"] = 6
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(spec))
    assert [p.path for p in info.value.problems] == ["/hyperparams/d_model"]


def test_placeholders_neither_invent_nor_hide_rule_findings(write_spec):
    # the card distils; without n_layers its placeholder must not make "layer 3 does not exist" appear
    spec = {"extends": str(ROOT / "spec" / "minimind.json"), "hyperparams": {"n_layers": None},
            "techniques": {"distill": {"layers": [3]}}}
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(spec))
    assert [p.path for p in info.value.problems] == ["/hyperparams/n_layers"]
    spec = copy.deepcopy(TINY)  # a missing "to" must not hide another merge point's self-loop
    spec["concat_merge_points"] = [{"from": "attention_output", "op": "add"}, {"from": "mlp_input", "to": "mlp_input", "op": "add"}]
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(spec))
    assert [p.path for p in info.value.problems] == ["/concat_merge_points/0/to", "/concat_merge_points/1/to"]
