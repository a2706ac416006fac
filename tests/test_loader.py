"""Loader: JSON and design cards, line:col errors, trailing commas, extends + merge patch."""

from __future__ import annotations

import json

import pytest

from minimind_spec import SpecError, load_spec
from minimind_spec.loader import load_document, merge_patch

from .conftest import CARD, SPEC, TINY, needs_card


@needs_card
def test_shipped_spec_is_the_card_block_verbatim():
    card = CARD.read_text(encoding="utf-8")
    block = card.split("```json\n", 1)[1].split("```", 1)[0]
    assert SPEC.read_text(encoding="utf-8") == block


@needs_card
def test_card_and_json_load_to_the_same_spec():
    assert load_spec(CARD).model_dump() == load_spec(SPEC).model_dump()


@needs_card
def test_trailing_comma_is_a_warning_naming_its_line():
    lines = SPEC.read_text(encoding="utf-8").splitlines()
    # the card's trailing comma ends the line just before the closing brace
    comma_line = max(i for i, text in enumerate(lines, 1) if text.rstrip().endswith(",") and lines[i].strip() == "}")
    warnings = [w.message for w in load_spec(SPEC).origin.warnings]
    assert any(f"trailing comma at line {comma_line}" in w for w in warnings)
    card_lines = CARD.read_text(encoding="utf-8").splitlines()
    offset = next(i for i, t in enumerate(card_lines) if t.startswith("```json")) + 1
    card_warnings = [w.message for w in load_spec(CARD).origin.warnings]
    assert any(f"trailing comma at line {comma_line + offset}" in w for w in card_warnings)


def test_comma_inside_a_string_is_not_touched(tmp_path):
    doc = dict(TINY, model_name="a,]b")
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    spec = load_spec(path)
    assert spec.model_name == "a,]b"
    assert not any("trailing comma" in w.message for w in spec.origin.warnings)


def test_syntax_error_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "model_name": "x"\n  "task": 1\n}\n', encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "line 3, column 3" in str(info.value)


def test_syntax_error_in_a_card_counts_lines_of_the_card(tmp_path):
    path = tmp_path / "card.md"
    path.write_text("# Card\n\ntext\n\n```json\n{\n  \"a\": 1\n  \"b\": 2\n}\n```\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert "line 8, column 3" in str(info.value)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"\x00\x01\x02binary", "binary"),
        (b'{"model_name": "\xff\xfe"}', "invalid UTF-8"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": 1e999}', "not finite"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b"[1, 2]", "a spec is a JSON object"),
        (b"// comment\n{}", "JSON syntax error"),
    ],
)
def test_unusable_files_raise_spec_error(tmp_path, content, needle):
    path = tmp_path / "spec.json"
    path.write_bytes(content)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert needle in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.json")
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


def test_card_without_json_block(tmp_path):
    path = tmp_path / "card.md"
    path.write_text("# A card\n```python\nprint(1)\n```\n", encoding="utf-8")
    with pytest.raises(SpecError, match="no ```json fenced block"):
        load_spec(path)


# RFC 7386 appendix A test vectors: (target, patch, result)
RFC7386 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC7386)
def test_merge_patch_matches_rfc7386(target, patch, result):
    assert merge_patch(target, patch) == result


def test_extends_applies_a_merge_patch(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps(TINY), encoding="utf-8")
    child = {"extends": "base.json", "hyperparams": {"n_layers": 4}, "backbone": {"norm": "LayerNorm"}}
    (tmp_path / "child.json").write_text(json.dumps(child), encoding="utf-8")
    spec = load_spec(tmp_path / "child.json")
    assert spec.hyperparams.n_layers == 4
    assert spec.hyperparams.d_model == TINY["hyperparams"]["d_model"]
    assert spec.backbone.norm == "LayerNorm"
    assert [p.name for p in spec.origin.chain] == ["child.json", "base.json"]


def test_extends_chain_of_three(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(TINY), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps({"extends": "a.json", "hyperparams": {"n_layers": 3}}), encoding="utf-8")
    (tmp_path / "c.json").write_text(json.dumps({"extends": "b.json", "hyperparams": {"n_heads": 8}}), encoding="utf-8")
    spec = load_spec(tmp_path / "c.json")
    assert (spec.hyperparams.n_layers, spec.hyperparams.n_heads) == (3, 8)


@needs_card
def test_extends_can_patch_a_design_card(tmp_path):
    child = {"extends": str(CARD), "hyperparams": {"n_layers": 2}}
    (tmp_path / "child.json").write_text(json.dumps(child), encoding="utf-8")
    assert load_spec(tmp_path / "child.json").hyperparams.n_layers == 2


@pytest.mark.parametrize("layout", ["self", "pair", "triangle"])
def test_extends_cycle_is_an_error(tmp_path, layout):
    names = {"self": ["a"], "pair": ["a", "b"], "triangle": ["a", "b", "c"]}[layout]
    for i, name in enumerate(names):
        target = names[(i + 1) % len(names)]
        (tmp_path / f"{name}.json").write_text(json.dumps({"extends": f"{target}.json"}), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_document(tmp_path / "a.json")
    problem = info.value.problems[0]
    assert problem.path == "/extends" and "extends cycle" in problem.message


def test_extends_missing_base(tmp_path):
    (tmp_path / "child.json").write_text(json.dumps({"extends": "nowhere.json"}), encoding="utf-8")
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "child.json")


def test_extends_must_be_a_string(tmp_path):
    (tmp_path / "child.json").write_text(json.dumps({"extends": 3}), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "child.json")
    assert info.value.problems[0].path == "/extends"


def _distilling(teacher: dict) -> dict:
    return {**TINY, "techniques": {"distill": {"enabled": True, **teacher}}}


def test_teacher_is_found_beside_the_spec_that_names_it(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "ablations").mkdir()
    (tmp_path / "base" / "base.json").write_text(json.dumps(_distilling({"teacher": "big"})), encoding="utf-8")
    (tmp_path / "base" / "big.json").write_text(json.dumps(TINY), encoding="utf-8")
    child = {"extends": "../base/base.json", "hyperparams": {"n_layers": 3}}
    (tmp_path / "ablations" / "child.json").write_text(json.dumps(child), encoding="utf-8")
    spec = load_spec(tmp_path / "ablations" / "child.json")
    assert spec.origin.teacher_spec == tmp_path / "base" / "big.json"
    assert not any("teacher" in w.path for w in spec.origin.warnings)


def test_explicit_teacher_spec_is_relative_to_the_file_that_sets_it(tmp_path):
    (tmp_path / "base" / "teachers").mkdir(parents=True)
    (tmp_path / "base" / "base.json").write_text(
        json.dumps(_distilling({"teacher_spec": "teachers/t.json"})), encoding="utf-8")
    wrong_vocab = {**TINY, "hyperparams": {**TINY["hyperparams"], "vocab": TINY["hyperparams"]["vocab"] + 1}}
    (tmp_path / "base" / "teachers" / "t.json").write_text(json.dumps(wrong_vocab), encoding="utf-8")
    (tmp_path / "child.json").write_text(json.dumps({"extends": "base/base.json"}), encoding="utf-8")
    with pytest.raises(SpecError) as error:
        load_spec(tmp_path / "child.json")
    (problem,) = error.value.problems
    assert problem.path == "/techniques/distill/teacher_spec" and "teacher vocab" in problem.message


def test_a_child_naming_its_own_teacher_looks_beside_itself(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.json").write_text(json.dumps(_distilling({"teacher": "big"})), encoding="utf-8")
    (tmp_path / "sub" / "small_teacher.json").write_text(json.dumps(TINY), encoding="utf-8")
    child = {"extends": "../base.json", "techniques": {"distill": {"teacher": "small_teacher"}}}
    (tmp_path / "sub" / "child.json").write_text(json.dumps(child), encoding="utf-8")
    assert load_spec(tmp_path / "sub" / "child.json").origin.teacher_spec == tmp_path / "sub" / "small_teacher.json"
