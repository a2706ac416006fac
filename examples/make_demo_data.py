"""Write the demo's data: a small, deterministic world of facts and arithmetic.

`pretrain.jsonl` ({"text": ...}) holds short descriptive sentences and arithmetic facts;
`sft.jsonl` ({"conversations": [...]}) holds questions "what is A plus B?" answered "A plus B
is C.", some with a reasoning_content. Nothing is downloaded: the demo trains on what this
script writes. Usage: python examples/make_demo_data.py OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]
ANIMALS = ["cat", "dog", "fox", "owl", "bear", "horse", "rabbit", "mouse", "duck", "goat", "sheep", "tiger", "lion", "frog"]
COLORS = ["red", "blue", "green", "yellow", "white", "black", "brown", "purple", "orange", "grey"]
PLACES = ["garden", "forest", "river", "kitchen", "market", "village", "mountain", "field", "library", "harbor", "meadow"]
VERBS = ["sat", "slept", "played", "walked", "waited", "danced", "jumped", "rested", "looked", "listened"]
THINGS = ["ball", "book", "apple", "basket", "lantern", "blanket", "bottle", "flower", "stone", "feather", "window"]


def sentence(rng: random.Random) -> str:
    a, b = rng.randrange(10), rng.randrange(9)
    return rng.choice([
        f"the {rng.choice(COLORS)} {rng.choice(ANIMALS)} {rng.choice(VERBS)} in the {rng.choice(PLACES)}.",
        f"a {rng.choice(ANIMALS)} found a {rng.choice(COLORS)} {rng.choice(THINGS)} near the {rng.choice(PLACES)}.",
        f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}.",
        f"there are {NUMBERS[a]} {rng.choice(THINGS)}s and {NUMBERS[b]} {rng.choice(ANIMALS)}s in the {rng.choice(PLACES)}.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--documents", type=int, default=3000)
    parser.add_argument("--conversations", type=int, default=1500)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "pretrain.jsonl", "w", encoding="utf-8") as out:
        for _ in range(args.documents):
            out.write(json.dumps({"text": " ".join(sentence(rng) for _ in range(rng.randint(2, 6)))}) + "\n")
    with open(args.out / "sft.jsonl", "w", encoding="utf-8") as out:
        for _ in range(args.conversations):
            a, b = rng.randrange(10), rng.randrange(9)
            answer = {"role": "assistant", "content": f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}."}
            if rng.random() < 0.3:
                answer["reasoning_content"] = f"{a} + {b} = {a + b}"
            turns = [{"role": "user", "content": f"what is {NUMBERS[a]} plus {NUMBERS[b]}?"}, answer]
            out.write(json.dumps({"conversations": turns}) + "\n")
    print(f"wrote {args.out}/pretrain.jsonl ({args.documents} documents) and {args.out}/sft.jsonl ({args.conversations} conversations)")


if __name__ == "__main__":
    main()
