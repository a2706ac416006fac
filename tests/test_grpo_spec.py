"""The GRPO stage's front end: the reward rules on hand-written completions, `techniques.grpo` resolved with
provenance into typed settings, spec errors with their JSON paths, and the plan (reference form, blocked
settings, the objective's description). No torch."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from minimind_spec import SpecError, load_spec, resolve
from minimind_spec.cli import app
from minimind_spec.objectives import GRPOObjective
from minimind_spec.plan import PlanInputs, ReferenceMode, build_plan
from minimind_spec.rewards import Completion, ExactMatch, Format, Length, Repetition, answers_equal, score, total
from minimind_spec.stages import StageKind

from .conftest import TINY

REASONED = "<think>\n3 and 4 make 7\n</think>\n\nThe answer is 7."


def _completion(body: str, tokens: int = 10, finished: bool = True) -> Completion:
    return Completion(body, tokens, finished)


def test_exact_match_reads_the_last_answer_after_the_reasoning():
    rule = ExactMatch(1.0)
    assert rule.score(_completion(REASONED), "7") == 1.0
    assert rule.score(_completion(REASONED), "7.0") == 1.0  # numerically
    assert rule.score(_completion(REASONED), "8") == 0.0
    assert rule.score(_completion("<think>The answer is 7</think>\n\nI do not know"), "7") == 0.0  # only after </think>
    assert rule.score(_completion("the answer is **1,000**"), "1000") == 1.0  # case, bold and thousands separators
    assert rule.score(_completion("The answer is 3.\nNo wait, the answer is 5"), "5") == 1.0  # the last match counts
    assert rule.score(_completion("7"), "7") == 0.0  # no "The answer is": nothing extracted
    assert ExactMatch(1.0, r"\\boxed\{([^}]*)\}").score(_completion(r"so \boxed{Red Ball}"), "red  ball") == 1.0
    assert answers_equal(" Paris. ", "paris") and not answers_equal("Paris", "Rome")


def test_format_wants_one_think_block_then_an_answer():
    rule = Format(0.5)
    assert rule.score(_completion(REASONED), "7") == 1.0
    assert rule.score(_completion("The answer is 7"), "7") == 0.0  # no reasoning block
    assert rule.score(_completion("<think>\n\n</think>\n\nThe answer is 7"), "7") == 0.0  # empty reasoning
    assert Format(0.5, require_reasoning=False).score(_completion("<think>\n\n</think>\n\nThe answer is 7"), "7") == 1.0
    assert rule.score(_completion("<think>\nhmm\n</think>\n\n"), "7") == 0.0  # no answer
    assert rule.score(_completion("<think>a</think><think>b</think> 7"), "7") == 0.0  # two blocks
    assert rule.score(_completion("<think>\nstill thinking"), "7") == 0.0  # never closed (cut off)


def test_length_is_free_up_to_the_target_then_falls_to_minus_one():
    rule = Length(1.0, target=100)
    assert [rule.score(_completion("x", tokens), "") for tokens in (50, 100, 150, 200, 400)] == [0.0, 0.0, -0.5, -1.0, -1.0]


def test_repetition_is_minus_the_share_of_repeated_ngrams():
    rule = Repetition(1.0, n=2)
    assert rule.score(_completion("one two three four"), "") == 0.0
    # words: a b a b a b -> bigrams ab ba ab ba ab: 3 of 5 repeat an earlier one
    assert rule.score(_completion("A b a b a b"), "") == pytest.approx(-3 / 5)
    assert rule.score(_completion("single"), "") == 0.0  # no bigram at all


def test_a_completions_reward_is_the_weighted_sum():
    rules = (ExactMatch(1.0), Format(0.5), Repetition(2.0))
    values = score(rules, _completion(REASONED), "7")
    assert values == {"exact_match": 1.0, "format": 1.0, "repetition": 0.0}
    assert total(rules, values) == 1.5


def _grpo_spec(write_spec, **grpo):
    return write_spec(hyperparams={**TINY["hyperparams"], "seq_len": 64}, techniques={"grpo": {"enabled": True, **grpo}})


def test_the_section_resolves_into_typed_rules_with_provenance(write_spec):
    spec = _grpo_spec(write_spec, num_generations=4, beta=0.1, loss="cispo",
                      rewards=[{"name": "exact_match", "weight": 2, "pattern": "answer: (\\d+)"}, {"name": "length", "target": 32}])
    resolved = resolve(load_spec(spec))
    grpo = resolved.training.grpo
    assert grpo.rewards == (ExactMatch(2.0, "answer: (\\d+)"), Length(1.0, 32))
    assert (grpo.num_generations, grpo.beta, grpo.loss, grpo.temperature) == (4, 0.1, "cispo", 1.0)
    assert resolved.provenance["training.grpo.beta"] == "spec:/techniques/grpo/beta"
    assert resolved.provenance["training.grpo.temperature"] == "default"
    default = resolve(load_spec(write_spec())).training.grpo
    assert default.rewards == (ExactMatch(1.0), Format(0.5)) and default.beta == 0.04 and default.num_generations == 8


@pytest.mark.parametrize("rewards,path,words", [
    ([{"name": "exact"}], "/techniques/grpo/rewards/0/name", "exact_match"),
    ([{"name": "format"}, {"name": "lenght", "target": 3}], "/techniques/grpo/rewards/1/name", "length"),
    ([{"name": "format", "n": 3}], "/techniques/grpo/rewards/0", "n is not a parameter of the format rule"),
    ([{"name": "exact_match", "pattern": "(unclosed"}], "/techniques/grpo/rewards/0", "not a regular expression"),
    ([{"name": "format"}, {"name": "format", "weight": 2}], "/techniques/grpo", "more than once"),
    ([], "/techniques/grpo/rewards", "at least 1"),
])
def test_bad_rewards_are_spec_errors_at_their_json_path(write_spec, rewards, path, words):
    with pytest.raises(SpecError) as caught:
        load_spec(_grpo_spec(write_spec, rewards=rewards))
    found = [p for p in caught.value.problems if p.path == path]
    assert found, [str(p) for p in caught.value.problems]
    assert any(words in str(p) for p in found), [str(p) for p in found]


def test_the_plan_carries_the_objective_its_reference_and_its_settings(write_spec, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"conversations": [{"role": "user", "content": "2+5?"}], "answer": "7"}) + "\n")
    resolved = resolve(load_spec(_grpo_spec(write_spec, num_generations=4, max_new_tokens=16)))
    plan = build_plan(resolved, PlanInputs(data={StageKind.GRPO: data}, init=tmp_path / "sft"))
    (grpo,) = plan.stages
    assert grpo.kind == "grpo" and grpo.blocked is None and grpo.reference == ReferenceMode.COPY
    assert isinstance(grpo.objective, GRPOObjective) and grpo.count_unit == "completion tokens"
    assert grpo.lr == 1e-6 and grpo.provenance["lr"].startswith("recipe: grpo lr")
    described = grpo.objective.describe()
    assert "4 completions per prompt" in described and "0.04 x KL" in described and "1 x exact_match" in described
    assert grpo.memory.activations > 0
    precomputed = build_plan(resolved, PlanInputs(data={StageKind.GRPO: data}, init=tmp_path / "sft", precompute_ref=True))
    assert precomputed.stages[0].reference == ReferenceMode.COPY  # sampled completions cannot be precomputed
    assert any("--precompute-ref does not apply" in w for w in precomputed.stages[0].warnings)


def test_under_lora_the_reference_is_the_policy_with_its_adapters_off_unless_they_were_trained(write_spec, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"conversations": [{"role": "user", "content": "2+5?"}], "answer": "7"}) + "\n")
    spec = write_spec(hyperparams={**TINY["hyperparams"], "seq_len": 64},
                      techniques={"lora": {"enabled": True, "placements": ["q_proj", "v_proj"]},
                                  "grpo": {"enabled": True, "max_new_tokens": 16}})
    resolved = resolve(load_spec(spec))
    alone = build_plan(resolved, PlanInputs(data={StageKind.GRPO: data}, init=tmp_path / "sft"))
    assert alone.stages[0].reference == ReferenceMode.ADAPTERS_OFF and alone.stages[0].trainable_roles == ("lora",)
    after_sft = build_plan(resolved, PlanInputs(data={StageKind.SFT: data, StageKind.GRPO: data},
                                                stages=(StageKind.SFT, StageKind.GRPO), init=tmp_path / "base"))
    assert after_sft.stages[1].reference == ReferenceMode.COPY  # the SFT stage trained the adapters


def test_a_completion_with_no_room_for_its_prompt_blocks_the_stage(write_spec, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("{}\n")
    plan = build_plan(resolve(load_spec(_grpo_spec(write_spec, max_new_tokens=64))), PlanInputs(data={StageKind.GRPO: data}))
    (grpo,) = [s for s in plan.stages if s.kind == "grpo"]
    assert "leaves no room for a prompt" in (grpo.blocked or "") and "max_new_tokens" in (grpo.unblock or "")


def test_train_plan_shows_the_stage_and_its_data_flag(write_spec, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"conversations": [{"role": "user", "content": "2+5?"}], "answer": 7}) + "\n")
    spec = _grpo_spec(write_spec, max_new_tokens=16)
    result = CliRunner().invoke(app, ["train", str(spec), "--plan", "--json", "--stage", "grpo", "--grpo-data", str(data),
                                      "--init", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (stage,) = json.loads(result.stdout)["stages"]
    assert stage["kind"] == "grpo" and stage["reference"] == "copy" and stage["runnable"]
    assert stage["objective"]["rewards"][0] == {"weight": 1.0, "pattern": "The answer is:?\\s*(.+)", "name": "exact_match"}
    assert stage["objective"]["description"].startswith("GRPO: 8 completions per prompt")
    helped = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert "--grpo-data" in helped.output
