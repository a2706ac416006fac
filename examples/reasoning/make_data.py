"""Write the reasoning task's data: two-step arithmetic word problems, no network needed.

A problem: "Ann has 5 apples. She buys 3 more and gives away 2. How many apples does Ann have
now?" Its worked answer has the reasoning `5 + 3 = 8. 8 - 2 = 6.` (in `<think>`, MiniMind's
`reasoning_content`) and the content `The answer is 6.` The (a, b, c) triples are split once:
held-out problems use triples that no SFT problem or preference pair uses (the pretraining
stories, general knowledge of this world, write out sums of every triple).

Files (in OUT_DIR):
- `pretrain.jsonl`  {"text"}: stories of the same world with their arithmetic written out;
- `sft.jsonl`       {"conversations"}: problems with worked answers;
- `pairs.jsonl`     {"chosen", "rejected"}: the worked answer against a subtly wrong one
                    (the same first step, the final answer off by one);
- `eval.jsonl`      held-out problems {"prompt", "answer"}, and `eval_pairs.jsonl` held-out pairs;
- with `--general N`: N general-text documents (the same world, no arithmetic) mixed into
  `pretrain.jsonl`, and `heldout_text.jsonl` {"text", "domain"}: held-out stories and general
  text, for the ablation study's long-context, mixed-domain and general-text losses.

Usage: python examples/reasoning/make_data.py OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ["Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivy", "Jon", "Kim", "Leo", "Mia", "Ned", "Ola", "Pia"]
ITEMS = ["apples", "books", "coins", "pens", "shells", "stamps", "cards", "eggs", "rocks", "beads", "cups", "hats"]
GAINS = [("buys", "more"), ("finds", "more"), ("gets", "more"), ("picks up", "more")]
LOSSES = ["gives away", "loses", "sells", "drops"]


def triples() -> list[tuple[int, int, int]]:
    """Every (a, b, c): a, b in 1..9, c in 1..a+b-1 (the result stays positive)."""
    return [(a, b, c) for a in range(1, 10) for b in range(1, 10) for c in range(1, a + b)]


def problem(rng: random.Random, a: int, b: int, c: int) -> tuple[str, str, str]:
    """(question, reasoning, answer text)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    gain, more = rng.choice(GAINS)
    loss = rng.choice(LOSSES)
    question = f"{name} has {a} {item}. {name} {gain} {b} {more} and {loss} {c}. How many {item} does {name} have now?"
    reasoning = f"{a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}."
    return question, reasoning, f"The answer is {a + b - c}."


def story(rng: random.Random, a: int, b: int, c: int) -> str:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    gain, more = rng.choice(GAINS)
    loss = rng.choice(LOSSES)
    return rng.choice([
        f"{name} has {a} {item}. {name} {gain} {b} {more}, so {name} has {a + b} {item}. "
        f"Then {name} {loss} {c}, and {a + b} - {c} = {a + b - c}. Now {name} has {a + b - c} {item}.",
        f"{a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}. {name} counts {a + b - c} {item} on the table.",
        f"{name} likes {item}. Yesterday {name} had {a} {item}; today {name} has {a + b}, because {a} + {b} = {a + b}.",
    ])


PLACES = ["river", "market", "school", "garden", "harbour", "library", "bakery", "hill", "forest", "station"]
THINGS = ["a red box", "a blue bag", "an old tin", "a wooden chest", "a paper bag", "a glass jar"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def general_text(rng: random.Random) -> str:
    """A few sentences about the world of the problems, with no arithmetic in them."""
    name, other = rng.sample(NAMES, 2)
    place, second = rng.sample(PLACES, 2)
    sentences = [
        f"{name} lives near the {place}.", f"On {rng.choice(DAYS)} {name} walks to the {second} with {other}.",
        f"{name} keeps the {rng.choice(ITEMS)} in {rng.choice(THINGS)}.", f"{other} likes the {place} best.",
        f"The {second} is quiet in the morning and busy after lunch.", f"{other} asks {name} about the {rng.choice(ITEMS)}.",
        f"They sit by the {place} and talk until it is dark.", f"{name} says the {second} is far, but {other} does not mind.",
    ]
    return " ".join(rng.sample(sentences, rng.randint(3, 6)))


def conversation(question: str, reasoning: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": answer, "reasoning_content": reasoning}]


def wrong(rng: random.Random, a: int, b: int, c: int) -> tuple[str, str]:
    """A subtly wrong worked answer: the first step right, the result off by one."""
    off = a + b - c + rng.choice([-1, 1]) if a + b - c > 1 else a + b - c + 1
    return f"{a} + {b} = {a + b}. {a + b} - {c} = {off}.", f"The answer is {off}."


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stories", type=int, default=6000)
    parser.add_argument("--problems", type=int, default=3000)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--general", type=int, default=0, help="general-text documents mixed into pretraining "
                        "(and held-out text written)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    every = triples()
    rng.shuffle(every)
    held_out, seen = every[:60], every[60:]  # held-out problems use triples never trained on
    args.out.mkdir(parents=True, exist_ok=True)
    documents = [{"text": " ".join(story(rng, *rng.choice(every)) for _ in range(rng.randint(2, 5)))}
                 for _ in range(args.stories)]
    if args.general:
        general = random.Random(args.seed + 1)  # its own stream: the other files stay as they are without --general
        documents += [{"text": general_text(general)} for _ in range(args.general)]
        general.shuffle(documents)
        write_jsonl(args.out / "heldout_text.jsonl",
                    [{"text": " ".join(story(general, *general.choice(every)) for _ in range(general.randint(2, 5))),
                      "domain": "story"} for _ in range(args.held_out)]
                    + [{"text": general_text(general), "domain": "general"} for _ in range(args.held_out)])
    write_jsonl(args.out / "pretrain.jsonl", documents)
    sft, pairs = [], []
    for _ in range(args.problems):
        sft.append({"conversations": conversation(*problem(rng, *rng.choice(seen)))})
    for _ in range(args.pairs):
        triple = rng.choice(seen)
        question, reasoning, answer = problem(rng, *triple)
        bad_reasoning, bad_answer = wrong(rng, *triple)
        pairs.append({"chosen": conversation(question, reasoning, answer),
                      "rejected": conversation(question, bad_reasoning, bad_answer)})
    write_jsonl(args.out / "sft.jsonl", sft)
    write_jsonl(args.out / "pairs.jsonl", pairs)
    evaluation, eval_pairs = [], []
    for i in range(args.held_out):
        triple = held_out[i % len(held_out)]
        question, reasoning, answer = problem(rng, *triple)
        evaluation.append({"prompt": question, "answer": sum(triple[:2]) - triple[2]})
        bad_reasoning, bad_answer = wrong(rng, *triple)
        eval_pairs.append({"chosen": conversation(question, reasoning, answer),
                           "rejected": conversation(question, bad_reasoning, bad_answer)})
    write_jsonl(args.out / "eval.jsonl", evaluation)
    write_jsonl(args.out / "eval_pairs.jsonl", eval_pairs)
    print(f"wrote {args.out}: {args.stories} stories, {args.problems} problems, {args.pairs} pairs, "
          f"{args.held_out} held-out problems and pairs ({len(held_out)} held-out triples)")


if __name__ == "__main__":
    main()
