"""Write the reasoning task's data: three-step arithmetic word problems, no network needed.

A problem: "Kim has 34 pens. Kim finds 7 more and loses 9. Then Kim gets 5 more. How many pens
does Kim have now?" Its worked answer has the reasoning `34 + 7 = 41. 41 - 9 = 32. 32 + 5 = 37.`
(in `<think>`, MiniMind's `reasoning_content`) and the content `The answer is 37.` A problem is a
tuple (a, b, c, d): a two-digit start a in 10..49, then +b, -c, +d with b, c, d in 1..9, so two
of the three steps can carry or borrow. The tuples are split once: held-out problems use tuples
that no SFT problem, preference pair or GRPO prompt uses. The pretraining stories, general
knowledge of this world, write out the arithmetic of tuples drawn from all of them (every sum
the problems need is in pretraining; a held-out problem is a new combination of known sums).
Pretraining also tells of single purchases with coins (the held-out domain's words and sums).

A second kind, the held-out domain (for adapting a fine-tuned model to something new): money
problems, "Kim has 43 coins. Kim spends 6 coins on a kite and 8 coins on a lamp. How many
coins does Kim have left?", worked as two subtractions, `43 - 6 = 37. 37 - 8 = 29.` No SFT
problem pays, spends or subtracts twice, so the SFT model answers them in the wrong pattern.

Files (in OUT_DIR):
- `pretrain.jsonl`  {"text"}: stories of the same world with their arithmetic written out;
- `sft.jsonl`       {"conversations"}: problems with worked answers;
- `pairs.jsonl`     {"chosen", "rejected"}: the worked answer against a subtly wrong one (half
                    the last step off by one, half the second step off by one and carried on);
- `grpo.jsonl`      {"conversations": [the user turn], "answer": "37"}: prompts for GRPO from
                    training tuples, the answer the final number as a string;
- `eval.jsonl`      held-out problems {"prompt", "answer"}, and `eval_pairs.jsonl` held-out pairs;
- `domain_sft.jsonl` {"conversations"} and `domain_eval.jsonl` {"prompt", "answer"}: the money
                    problems, the evaluation on (a, b, c) tuples domain_sft never uses;
- with `--general N`: N general-text documents (the same world, no arithmetic) mixed into
  `pretrain.jsonl`, and `heldout_text.jsonl` {"text", "domain"}: held-out stories and general
  text, for the ablation study's long-context, mixed-domain and general-text losses.

Everything follows from `--seed`: the same seed writes the same files.

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
LATER = ["Then", "Later", "After that"]
STARTS = range(10, 50)  # a: two digits
STEPS = range(1, 10)  # b, c, d
Tuple4 = tuple[int, int, int, int]
Tuple3 = tuple[int, int, int]


def tuples() -> list[Tuple4]:
    """Every (a, b, c, d): a in 10..49, b, c, d in 1..9 (every intermediate stays positive)."""
    return [(a, b, c, d) for a in STARTS for b in STEPS for c in STEPS for d in STEPS]


def steps(a: int, b: int, c: int, d: int) -> tuple[int, int, int]:
    """The three partial results: a + b, a + b - c, a + b - c + d."""
    return a + b, a + b - c, a + b - c + d


def worked(a: int, b: int, c: int, d: int) -> tuple[str, str]:
    """(reasoning, answer text) of the right worked answer."""
    s1, s2, s3 = steps(a, b, c, d)
    return f"{a} + {b} = {s1}. {s1} - {c} = {s2}. {s2} + {d} = {s3}.", f"The answer is {s3}."


def problem(rng: random.Random, a: int, b: int, c: int, d: int) -> tuple[str, str, str]:
    """(question, reasoning, answer text)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    gain, more = rng.choice(GAINS)
    loss, later = rng.choice(LOSSES), rng.choice(LATER)
    question = (f"{name} has {a} {item}. {name} {gain} {b} {more} and {loss} {c}. {later} {name} gets {d} more. "
                f"How many {item} does {name} have now?")
    return (question, *worked(a, b, c, d))


def story(rng: random.Random, a: int, b: int, c: int, d: int) -> str:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    gain, more = rng.choice(GAINS)
    loss = rng.choice(LOSSES)
    s1, s2, s3 = steps(a, b, c, d)
    return rng.choice([
        f"{name} has {a} {item}. {name} {gain} {b} {more}, so {name} has {s1} {item}. "
        f"Then {name} {loss} {c}, and {s1} - {c} = {s2}. Now {name} has {s2} {item}.",
        f"{a} + {b} = {s1}. {s1} - {c} = {s2}. {s2} + {d} = {s3}. {name} counts {s3} {item} on the table.",
        f"{name} likes {item}. Yesterday {name} had {s2} {item}; today {name} has {s3}, because {s2} + {d} = {s3}.",
    ])


def wrong(rng: random.Random, a: int, b: int, c: int, d: int) -> tuple[str, str]:
    """A subtly wrong worked answer: the last step off by one, or the second step off by one and
    the last step done right from it. Either way the final answer is off by one."""
    s1, s2, s3 = steps(a, b, c, d)
    off = rng.choice([-1, 1])
    if rng.random() < 0.5:
        return f"{a} + {b} = {s1}. {s1} - {c} = {s2}. {s2} + {d} = {s3 + off}.", f"The answer is {s3 + off}."
    return (f"{a} + {b} = {s1}. {s1} - {c} = {s2 + off}. {s2 + off} + {d} = {s3 + off}.",
            f"The answer is {s3 + off}.")


# The held-out domain: money spent twice.
SHOP = ["a kite", "a lamp", "a book", "a ball", "a cake", "a scarf", "a plant", "a map", "a drum", "a bell"]
PAYS = ["pays", "spends"]


def domain_tuples() -> list[Tuple3]:
    """Every (a, b, c): a in 20..49 coins, two prices b, c in 1..9."""
    return [(a, b, c) for a in range(20, 50) for b in STEPS for c in STEPS]


def money_story(rng: random.Random, a: int, b: int) -> str:
    """Pretraining's knowledge of the domain: one purchase (never two, never as a question)."""
    name, thing = rng.choice(NAMES), rng.choice(SHOP)
    return rng.choice([f"{name} has {a} coins and {rng.choice(PAYS)} {b} coins on {thing}. {a} - {b} = {a - b}.",
                       f"{thing.capitalize()} costs {b} coins. {name} had {a} coins and has {a - b} left."])


def domain_problem(rng: random.Random, a: int, b: int, c: int) -> tuple[str, str, str]:
    """(question, reasoning, answer text) of a money problem: a - b - c."""
    name = rng.choice(NAMES)
    first, second = rng.sample(SHOP, 2)
    pay = rng.choice(PAYS)
    question = (f"{name} has {a} coins. {name} {pay} {b} coins on {first} and {c} coins on {second}. "
                f"How many coins does {name} have left?")
    return question, f"{a} - {b} = {a - b}. {a - b} - {c} = {a - b - c}.", f"The answer is {a - b - c}."


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


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_domain(out: Path, rng: random.Random, problems: int, held_out: int) -> None:
    """domain_sft.jsonl on training (a, b, c), domain_eval.jsonl on held-out ones, one problem each."""
    every = domain_tuples()
    rng.shuffle(every)
    held, seen = every[:held_out], every[held_out:]
    write_jsonl(out / "domain_sft.jsonl",
                [{"conversations": conversation(*domain_problem(rng, *rng.choice(seen)))} for _ in range(problems)])
    write_jsonl(out / "domain_eval.jsonl",
                [{"prompt": domain_problem(rng, *t)[0], "answer": t[0] - t[1] - t[2]} for t in held])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stories", type=int, default=6000)
    parser.add_argument("--problems", type=int, default=3000)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--grpo", type=int, default=1000, help="GRPO prompts")
    parser.add_argument("--domain", type=int, default=1500, help="money problems in domain_sft.jsonl")
    parser.add_argument("--held-out", type=int, default=200, help="held-out problems (each on its own tuple), pairs "
                        "and money problems")
    parser.add_argument("--general", type=int, default=0, help="general-text documents mixed into pretraining "
                        "(and held-out text written)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    every = tuples()
    rng.shuffle(every)
    held_out, seen = every[:args.held_out], every[args.held_out:]  # held-out problems use tuples never trained on
    args.out.mkdir(parents=True, exist_ok=True)
    documents = [{"text": " ".join(story(rng, *rng.choice(every)) for _ in range(rng.randint(2, 4)))}
                 for _ in range(args.stories)]
    money = random.Random(f"money {args.seed}")
    documents += [{"text": " ".join(money_story(money, money.choice(range(11, 50)), money.choice(STEPS))
                                    for _ in range(money.randint(2, 4)))} for _ in range(args.stories // 6)]
    money.shuffle(documents)
    if args.general:
        general = random.Random(args.seed + 1)  # its own stream: the other files stay as they are without --general
        documents += [{"text": general_text(general)} for _ in range(args.general)]
        general.shuffle(documents)
        write_jsonl(args.out / "heldout_text.jsonl",
                    [{"text": " ".join(story(general, *general.choice(every)) for _ in range(general.randint(2, 4))),
                      "domain": "story"} for _ in range(args.held_out)]
                    + [{"text": general_text(general), "domain": "general"} for _ in range(args.held_out)])
    write_jsonl(args.out / "pretrain.jsonl", documents)
    sft = [{"conversations": conversation(*problem(rng, *rng.choice(seen)))} for _ in range(args.problems)]
    pairs = []
    for _ in range(args.pairs):
        chosen = rng.choice(seen)
        question, reasoning, answer = problem(rng, *chosen)
        pairs.append({"chosen": conversation(question, reasoning, answer),
                      "rejected": conversation(question, *wrong(rng, *chosen))})
    write_jsonl(args.out / "sft.jsonl", sft)
    write_jsonl(args.out / "pairs.jsonl", pairs)
    evaluation, eval_pairs = [], []
    for held in held_out:
        question, reasoning, answer = problem(rng, *held)
        evaluation.append({"prompt": question, "answer": steps(*held)[2]})
        eval_pairs.append({"chosen": conversation(question, reasoning, answer),
                           "rejected": conversation(question, *wrong(rng, *held))})
    write_jsonl(args.out / "eval.jsonl", evaluation)
    write_jsonl(args.out / "eval_pairs.jsonl", eval_pairs)
    # The files below come from their own streams, so the ones above do not depend on their sizes.
    grpo = random.Random(f"grpo {args.seed}")
    write_jsonl(args.out / "grpo.jsonl",
                [{"conversations": [{"role": "user", "content": problem(grpo, *t)[0]}], "answer": str(steps(*t)[2])}
                 for t in (grpo.choice(seen) for _ in range(args.grpo))])
    write_domain(args.out, random.Random(f"domain {args.seed}"), args.domain, args.held_out)
    print(f"wrote {args.out}: {args.stories} stories, {args.problems} problems, {args.pairs} pairs, {args.grpo} GRPO "
          f"prompts, {args.held_out} held-out problems and pairs (each its own tuple), {args.domain} + {args.held_out} "
          "money problems")


if __name__ == "__main__":
    main()
