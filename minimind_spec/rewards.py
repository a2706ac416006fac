"""Verifiable rewards for the GRPO stage: rule functions over a completion's text and a reference answer.

Torch-free. The spec lists the rules under `techniques.grpo.rewards` (`{"name": ..., "weight": ...,
+ the rule's own parameters}`); `resolve` turns each entry into one of the typed rules below,
and the engine's GRPO stage scores every sampled completion with every rule. A completion's
reward is the weighted sum of its rules' values; each rule's mean is logged as `rewards/<name>`.

A rule reads a `Completion`: the assistant body the model wrote, i.e. what follows
`<|im_start|>assistant\n` (the part of the generation prompt after the role header, e.g. an
opened `<think>\n`, followed by the decoded completion, without `<|im_end|>`), its token count
and whether it ended with `<|im_end|>`. The body's layout is the chat template's
(`engine/data/chatml.py`): `<think>\n{reasoning}\n</think>\n\n{answer}`.

The rules (each value is in [0, 1] or [-1, 0], so weights say how much a rule matters):
- `exact_match` (1 or 0): the last match of `pattern` (a regular expression, case-insensitive;
  default "The answer is <text to the end of the line>") in the answer part (after the last
  `</think>`, or the whole body without one), group 1 if the pattern has a group, stripped of
  whitespace, `**` and a trailing `.`, equals the reference answer: numerically when both
  read as numbers (`7`, `7.0`, `1,000`), else as text, case and runs of whitespace ignored.
  No match scores 0.
- `format` (1 or 0): the body is `<think>...</think>` then an answer: exactly one `<think>`,
  at the start, exactly one `</think>` after it, a non-empty answer after it, and (with
  `require_reasoning`, the default) non-empty reasoning between them.
- `length` (0 to -1): 0 up to `target` completion tokens; beyond it, -(tokens - target) / target,
  down to -1 at twice the target (and for a completion cut off at max_new_tokens).
- `repetition` (0 to -1): minus the share of the body's word n-grams (`n` words, default 3;
  words and punctuation marks, lower-cased) that repeat an earlier n-gram.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
DEFAULT_ANSWER_PATTERN = r"The answer is:?\s*(.+)"
RewardName = Literal["exact_match", "format", "length", "repetition"]
REWARD_NAMES: tuple[str, ...] = ("exact_match", "format", "length", "repetition")


@dataclass(frozen=True)
class Completion:
    """What one sampled completion is scored on."""

    body: str  # the assistant body: the generation prompt's part after the role header + the decoded completion
    tokens: int  # completion tokens sampled (its <|im_end|> included)
    finished: bool  # it ended with <|im_end|> (not cut off at max_new_tokens)

    @property
    def answer(self) -> str:
        """The text after the last `</think>`; the whole body when there is none."""
        return self.body.rsplit(THINK_CLOSE, 1)[-1]


def _number(text: str) -> float | None:
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _clean(text: str) -> str:
    return text.strip().strip("*").strip().rstrip(".").strip()


def answers_equal(given: str, reference: str) -> bool:
    """Numerically when both read as numbers, else as text with case and runs of whitespace ignored."""
    given, reference = _clean(given), _clean(reference)
    a, b = _number(given), _number(reference)
    if a is not None and b is not None:
        return abs(a - b) <= 1e-9 * max(1.0, abs(b))
    return " ".join(given.casefold().split()) == " ".join(reference.casefold().split())


@dataclass(frozen=True)
class ExactMatch:
    """1 when the answer the pattern extracts equals the reference answer, else 0."""

    weight: float
    pattern: str = DEFAULT_ANSWER_PATTERN
    name: Literal["exact_match"] = "exact_match"

    @cached_property
    def _regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.IGNORECASE)

    def extract(self, completion: Completion) -> str | None:
        """The answer the completion gives (None: the pattern does not match)."""
        matches = list(self._regex.finditer(completion.answer))
        if not matches:
            return None
        last = matches[-1]
        return last.group(1) if self._regex.groups else last.group(0)

    def score(self, completion: Completion, answer: str) -> float:
        given = self.extract(completion)
        return 1.0 if given is not None and answers_equal(given, answer) else 0.0

    def describe(self) -> str:
        return f"exact_match (pattern \"{self.pattern}\")"


@dataclass(frozen=True)
class Format:
    """1 when the body is a <think> block then a non-empty answer, else 0."""

    weight: float
    require_reasoning: bool = True
    name: Literal["format"] = "format"

    def score(self, completion: Completion, answer: str) -> float:
        body = completion.body.lstrip()
        if not body.startswith(THINK_OPEN) or body.count(THINK_OPEN) != 1 or body.count(THINK_CLOSE) != 1:
            return 0.0
        reasoning, _, rest = body[len(THINK_OPEN):].partition(THINK_CLOSE)
        if not rest.strip() or (self.require_reasoning and not reasoning.strip()):
            return 0.0
        return 1.0

    def describe(self) -> str:
        return "format (<think>reasoning</think> answer" + (")" if self.require_reasoning else ", reasoning may be empty)")


@dataclass(frozen=True)
class Length:
    """0 up to `target` tokens, then falling linearly to -1 at twice the target."""

    weight: float
    target: int = 256
    name: Literal["length"] = "length"

    def score(self, completion: Completion, answer: str) -> float:
        over = completion.tokens - self.target
        return -min(1.0, over / self.target) if over > 0 else 0.0

    def describe(self) -> str:
        return f"length (penalised beyond {self.target} tokens)"


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


@dataclass(frozen=True)
class Repetition:
    """Minus the share of the body's word n-grams that repeat an earlier one."""

    weight: float
    n: int = 3
    name: Literal["repetition"] = "repetition"

    def score(self, completion: Completion, answer: str) -> float:
        grams = word_ngrams(completion.body, self.n)
        if not grams:
            return 0.0
        return -(len(grams) - len(set(grams))) / len(grams)

    def describe(self) -> str:
        return f"repetition (repeated {self.n}-grams)"


RewardRule = ExactMatch | Format | Length | Repetition
DEFAULT_REWARDS: tuple[RewardRule, ...] = (ExactMatch(1.0), Format(0.5))


def describe_rewards(rules: tuple[RewardRule, ...]) -> str:
    """`1 x exact_match (...) + 0.5 x format (...)`."""
    return " + ".join(f"{rule.weight:g} x {rule.describe()}" for rule in rules)


def score(rules: tuple[RewardRule, ...], completion: Completion, answer: str) -> dict[str, float]:
    """Each rule's (unweighted) value for one completion, by rule name."""
    return {rule.name: rule.score(completion, answer) for rule in rules}


def total(rules: tuple[RewardRule, ...], values: dict[str, float]) -> float:
    """The completion's reward: the weighted sum of its rules' values."""
    return sum(rule.weight * values[rule.name] for rule in rules)
