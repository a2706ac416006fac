"""The reasoning example's data (examples/reasoning/make_data.py): held-out problems are new,
the held-out domain is a kind the SFT data never has, GRPO answers are the worked answers' final
numbers, and the files follow from --seed alone. Small sizes: a second or two."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "reasoning" / "make_data.py"
SIZES = ["--stories", "200", "--problems", "400", "--pairs", "300", "--grpo", "200", "--domain", "300", "--held-out", "60",
         "--general", "50"]
FILES = ("pretrain.jsonl", "sft.jsonl", "pairs.jsonl", "grpo.jsonl", "eval.jsonl", "eval_pairs.jsonl",
         "domain_sft.jsonl", "domain_eval.jsonl", "heldout_text.jsonl")
THREE_STEPS = re.compile(r"^(\d+) \+ (\d+) = (\d+)\. (\d+) - (\d+) = (\d+)\. (\d+) \+ (\d+) = (\d+)\.$")
TWO_SUBTRACTIONS = re.compile(r"^(\d+) - (\d+) = (\d+)\. (\d+) - (\d+) = (\d+)\.$")


def make(out: Path, seed: int) -> Path:
    subprocess.run([sys.executable, str(SCRIPT), str(out), "--seed", str(seed), *SIZES], check=True, capture_output=True)
    return out


def rows(data: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (data / name).read_text(encoding="utf-8").splitlines()]


def numbers(question: str) -> tuple[int, ...]:
    """The problem's tuple: the numbers of its question, in order (names and items hold none)."""
    return tuple(int(n) for n in re.findall(r"\d+", question))


def final(answer: str) -> int:
    return int(re.fullmatch(r"The answer is (-?\d+)\.", answer).group(1))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make(tmp_path_factory.mktemp("reasoning") / "seed0", 0)


def test_worked_answers_are_right_and_pairs_are_off_by_one(data: Path) -> None:
    worked = [r["conversations"] for r in rows(data, "sft.jsonl")] + [r["chosen"] for r in rows(data, "pairs.jsonl")]
    for user, assistant in worked:
        a, b, c, d = numbers(user["content"])
        steps = THREE_STEPS.match(assistant["reasoning_content"]).groups()
        assert tuple(map(int, steps)) == (a, b, a + b, a + b, c, a + b - c, a + b - c, d, a + b - c + d)
        assert final(assistant["content"]) == a + b - c + d
    for pair in rows(data, "pairs.jsonl") + rows(data, "eval_pairs.jsonl"):
        assert pair["chosen"][0] == pair["rejected"][0]
        assert abs(final(pair["rejected"][1]["content"]) - final(pair["chosen"][1]["content"])) == 1
    for problem in rows(data, "eval.jsonl"):
        a, b, c, d = numbers(problem["prompt"])
        assert problem["answer"] == a + b - c + d


def test_held_out_tuples_are_never_trained_on(data: Path) -> None:
    held = [numbers(r["prompt"]) for r in rows(data, "eval.jsonl")]
    assert len(set(held)) == len(held) == 60  # one problem per held-out tuple
    trained = {numbers(r["conversations"][0]["content"]) for r in rows(data, "sft.jsonl")}
    trained |= {numbers(r["chosen"][0]["content"]) for r in rows(data, "pairs.jsonl")}
    trained |= {numbers(r["conversations"][0]["content"]) for r in rows(data, "grpo.jsonl")}
    assert trained and not trained & set(held)
    assert {numbers(r["chosen"][0]["content"]) for r in rows(data, "eval_pairs.jsonl")} == set(held)


def test_grpo_answers_are_the_worked_answers_final_numbers(data: Path) -> None:
    for row in rows(data, "grpo.jsonl"):
        assert [turn["role"] for turn in row["conversations"]] == ["user"]
        a, b, c, d = numbers(row["conversations"][0]["content"])
        assert isinstance(row["answer"], str) and row["answer"] == str(a + b - c + d)


def test_the_domain_is_a_kind_sft_never_has(data: Path) -> None:
    for row in rows(data, "sft.jsonl"):
        question, answer = row["conversations"][0]["content"], row["conversations"][1]["reasoning_content"]
        assert THREE_STEPS.match(answer) and not TWO_SUBTRACTIONS.match(answer)
        assert not re.search(r"\b(pays|spends|left)\b", question)
    domain = [r["conversations"] for r in rows(data, "domain_sft.jsonl")]
    for user, assistant in domain:
        a, b, c = numbers(user["content"])
        assert re.search(r"\b(pays|spends)\b", user["content"]) and TWO_SUBTRACTIONS.match(assistant["reasoning_content"])
        assert final(assistant["content"]) == a - b - c
    evaluation = [r for r in rows(data, "domain_eval.jsonl")]
    assert all(r["answer"] == numbers(r["prompt"])[0] - sum(numbers(r["prompt"])[1:]) for r in evaluation)
    held = {numbers(r["prompt"]) for r in evaluation}
    assert len(held) == len(evaluation) and not held & {numbers(user["content"]) for user, _ in domain}


def test_the_files_follow_from_the_seed(data: Path, tmp_path: Path) -> None:
    again, other = make(tmp_path / "again", 0), make(tmp_path / "other", 1)
    for name in FILES:
        assert (again / name).read_bytes() == (data / name).read_bytes(), name
        assert (other / name).read_bytes() != (data / name).read_bytes(), name
