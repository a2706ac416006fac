"""The technique blocks proved on a task: train a tiny MiniMind through the plan on three-step
arithmetic word problems and measure, on held-out problems, what each technique does.

One command, on a CPU:

    python examples/reasoning/run.py [--out out/reasoning] [--seeds 1] [--scale 1.0] [--quick]

For each seed k (0 .. N-1) it writes the data with data seed k (`make_data.py`, into
OUT/seed{k}/data), trains a tokenizer, then runs `minimind-spec train ... --seed k` for each arm
below into OUT/seed{k}/runs/ARM (every run an ordinary run directory; a finished arm, one with a
`.done` file, is not trained again), evaluates, and writes `results.md`, `results.json` and PNG
curves (from seed 0's runs) into OUT. An arm that fails is recorded with the tail of its output
and the rest go on; an arm whose stage or flag the installed CLI does not have yet is skipped,
with a line saying so. `--quick` halves every arm's steps (one seed took 12.3 minutes on a shared
2-core CPU, 11.9 of them training); `--scale` multiplies them. A rerun of the same command
trains nothing and only evaluates (under a minute per seed).

| arm | what | evaluated on |
|---|---|---|
| base | student pretraining | eval |
| sft | base + full SFT | eval, domain_eval |
| dpo | sft + DPO (full; its settings from student.json techniques.dpo) | eval, held-out pairs |
| teacher | the larger spec: pretraining + SFT | eval |
| distill | base + distillation from the teacher, as many steps as sft | eval |
| lora_plain | base + LoRA r=8 on q_proj, v_proj (the card's recipe), token embeddings frozen | eval |
| lora_tokens | the same with the special tokens' embeddings trained (`--trainable-tokens auto`) | eval |
| qlora | lora_tokens on an NF4 base (`student_qlora.json`) | eval |
| domain_full | sft + full SFT on the money problems | domain_eval |
| domain_lora | sft + LoRA r=8 on the money problems | domain_eval |
| sft_short | base + a short SFT (the GRPO start) | eval |
| grpo | sft_short + GRPO on grpo.jsonl | eval |
| moe_aux / moe_no_aux | MoE student pretraining with and without the balance loss | expert load |

The results (a)-(g) and the verdict rule are in report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from measure import exact_match, expert_load, last_metric, pair_log_probs, preference  # noqa: E402
from minimind_spec.engine.data.token_cache import build_token_cache  # noqa: E402
from minimind_spec.engine.data.tokenizer import load_tokenizer  # noqa: E402
from plots import plot  # noqa: E402
from report import DOMAIN_EVAL, MAIN_EVAL, report  # noqa: E402

STEPS = {"pretrain": 600, "sft": 150, "dpo": 150, "teacher": 600, "moe": 300, "domain": 100, "sft_short": 100,
         "grpo": 30}  # optimizer steps per arm at --scale 1
LORA = ["--stage", "lora", "--lora-rank", "8", "--lora-targets", "q_proj,v_proj"]  # the card's recipe


@dataclass(frozen=True)
class Arm:
    name: str
    spec: str
    flags: tuple[str, ...]
    after: tuple[str, ...] = ()  # arms it starts from: a failed or skipped one skips it
    needs: tuple[str, ...] = ()  # command-line flags of `train` it uses that older versions do not have


def arms(seed_dir: Path, steps: dict[str, str]) -> list[Arm]:
    data, runs = seed_dir / "data", seed_dir / "runs"
    pretrain, sft, domain = (("--pretrain-data", str(data / "pretrain.jsonl")), ("--sft-data", str(data / "sft.jsonl")),
                             ("--sft-data", str(data / "domain_sft.jsonl")))
    base, after_sft = ("--init", str(runs / "base" / "pretrain")), ("--init", str(runs / "sft"))
    return [
        Arm("base", "student.json", ("--stage", "pretrain", *pretrain, "--max-steps", steps["pretrain"])),
        Arm("sft", "student.json", ("--stage", "sft", "--no-lora", *base, *sft, "--max-steps", steps["sft"]), ("base",)),
        Arm("dpo", "student.json", ("--stage", "dpo", "--no-lora", *after_sft, "--dpo-data", str(data / "pairs.jsonl"),
                                    "--max-steps", steps["dpo"]), ("sft",)),
        Arm("teacher", "teacher.json", (*pretrain, *sft, "--max-steps", steps["teacher"])),
        Arm("distill", "student.json", ("--stage", "distill", "--no-lora", *base, "--teacher", str(runs / "teacher"),
                                        "--distill-data", str(data / "sft.jsonl"), "--max-steps", steps["sft"]),
            ("base", "teacher")),
        Arm("lora_plain", "student.json", (*LORA, *base, *sft, "--trainable-tokens", "none", "--max-steps", steps["sft"]),
            ("base",), ("--trainable-tokens",)),
        Arm("lora_tokens", "student.json", (*LORA, *base, *sft, "--trainable-tokens", "auto", "--max-steps", steps["sft"]),
            ("base",), ("--trainable-tokens",)),
        Arm("qlora", "student_qlora.json", (*LORA, *base, *sft, "--trainable-tokens", "auto", "--max-steps", steps["sft"]),
            ("base",), ("--trainable-tokens",)),
        Arm("domain_full", "student.json", ("--stage", "sft", "--no-lora", *after_sft, *domain, "--max-steps",
                                            steps["domain"]), ("sft",)),
        Arm("domain_lora", "student.json", (*LORA, *after_sft, *domain, "--trainable-tokens", "none", "--max-steps",
                                            steps["domain"]), ("sft",), ("--trainable-tokens",)),
        Arm("sft_short", "student.json", ("--stage", "sft", "--no-lora", *base, *sft, "--max-steps", steps["sft_short"]),
            ("base",)),
        Arm("grpo", "student.json", ("--stage", "grpo", "--no-lora", "--init", str(runs / "sft_short"), "--grpo-data",
                                     str(data / "grpo.jsonl"), "--max-steps", steps["grpo"]), ("sft_short",),
            ("--grpo-data",)),
        Arm("moe_aux", "student.json", ("--variant", "MoE", "--stage", "pretrain", *pretrain, "--max-steps", steps["moe"])),
        Arm("moe_no_aux", "student_moe_no_aux.json", ("--variant", "MoE", "--stage", "pretrain", *pretrain, "--max-steps",
                                                      steps["moe"])),
    ]


def cli_flags() -> str:
    """The installed `train` command's help text, to tell which flags it has."""
    help_text = subprocess.run([sys.executable, "-m", "minimind_spec", "train", "--help"], capture_output=True, text=True,
                               cwd=ROOT, env={**os.environ, "COLUMNS": "400", "NO_COLOR": "1"})
    return help_text.stdout


def train(seed_dir: Path, arm: Arm, seed: int) -> dict:
    """One `minimind-spec train` run into SEED_DIR/runs/ARM, skipped when it already finished.
    Returns {"status": "done" | "failed", "seconds", "tail"} (the output's last lines on failure)."""
    run_dir = seed_dir / "runs" / arm.name
    done = run_dir / ".done"
    if done.is_file():
        print(f"[seed {seed} {arm.name}] already trained: {run_dir}")
        return {"status": "done", "seconds": float(done.read_text())}
    command = [sys.executable, "-m", "minimind_spec", "train", str(HERE / arm.spec), "--tokenizer",
               str(seed_dir / "tokenizer"), "--out", str(run_dir), "--no-progress", "--eval-every", "100",
               "--save-every", "100", "--seed", str(seed), *arm.flags]
    if any(run_dir.glob("*/checkpoints")):
        command.append("--resume")  # an interrupted run continues
    elif run_dir.exists():
        command.append("--force")  # a run that failed before saving anything starts again
    print(f"[seed {seed} {arm.name}] {' '.join(command[2:])}", flush=True)
    started = time.perf_counter()
    tail: deque[str] = deque(maxlen=25)
    (seed_dir / "runs").mkdir(parents=True, exist_ok=True)
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process, \
            open(seed_dir / "runs" / f"{arm.name}.log", "a", encoding="utf-8") as log:
        for line in process.stdout:
            print(f"  {line}", end="", flush=True)
            log.write(line)
            tail.append(line.rstrip())
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        print(f"[seed {seed} {arm.name}] FAILED (exit {process.returncode}); the other arms go on", flush=True)
        return {"status": "failed", "seconds": seconds, "exit": process.returncode, "tail": "\n".join(tail)}
    done.write_text(f"{seconds:.1f}\n")
    return {"status": "done", "seconds": seconds}


def prepare(seed_dir: Path, seed: int) -> None:
    """The seed's data and tokenizer (kept when already written)."""
    data = seed_dir / "data"
    if not (data / "domain_eval.jsonl").is_file():
        subprocess.run([sys.executable, str(HERE / "make_data.py"), str(data), "--seed", str(seed)], check=True)
    if not (seed_dir / "tokenizer" / "tokenizer.json").is_file():
        subprocess.run([sys.executable, "-m", "minimind_spec", "tokenizer", "train", str(data / "pretrain.jsonl"),
                        str(data / "sft.jsonl"), str(data / "domain_sft.jsonl"), "--vocab-size", "384", "--out",
                        str(seed_dir / "tokenizer")], check=True, cwd=ROOT)


def train_seed(seed_dir: Path, seed: int, steps: dict[str, str], help_text: str) -> dict[str, dict]:
    """Every arm of one seed; returns each arm's status."""
    status: dict[str, dict] = {}
    for arm in arms(seed_dir, steps):
        missing = [flag for flag in arm.needs if flag not in help_text]
        broken = [name for name in arm.after if status[name]["status"] != "done"]
        if missing:
            status[arm.name] = {"status": "skipped", "why": f"the installed `train` has no {', '.join(missing)}"}
        elif broken:
            status[arm.name] = {"status": "skipped", "why": f"{', '.join(broken)} did not train"}
        else:
            status[arm.name] = train(seed_dir, arm, seed)
        if status[arm.name]["status"] == "skipped":
            print(f"[seed {seed} {arm.name}] skipped: {status[arm.name]['why']}", flush=True)
    return status


def guarded(what: str, errors: dict[str, str], function, *args):  # noqa: ANN001, ANN202
    """FUNCTION(*ARGS), or None with the error recorded under WHAT."""
    try:
        return function(*args)
    except Exception as error:  # noqa: BLE001 - one broken measurement must not lose the others
        errors[what] = f"{type(error).__name__}: {error}"
        print(f"  could not measure {what}: {errors[what]}", flush=True)
        return None


def evaluate_seed(seed_dir: Path, status: dict[str, dict]) -> dict:
    """Every measurement of one seed's trained arms."""
    runs, data = seed_dir / "runs", seed_dir / "data"
    trained = {name for name, s in status.items() if s["status"] == "done"}
    tokenizer = load_tokenizer(seed_dir / "tokenizer")
    problems = [json.loads(line) for line in (data / "eval.jsonl").read_text().splitlines()]
    domain = [json.loads(line) for line in (data / "domain_eval.jsonl").read_text().splitlines()]
    errors: dict[str, str] = {}
    result: dict = {"arms": status, "errors": errors}
    result["eval"] = {name: guarded(f"{name} on eval", errors, exact_match, runs / name, tokenizer, problems)
                      for name in MAIN_EVAL if name in trained}
    result["domain_eval"] = {name: guarded(f"{name} on domain_eval", errors, exact_match, runs / name, tokenizer, domain)
                             for name in DOMAIN_EVAL if name in trained}
    if {"sft", "dpo"} <= trained:
        cache = build_token_cache(data / "eval_pairs.jsonl", tokenizer, "preference", seed_dir / "cache", max_length=128)
        resolved = json.loads((runs / "dpo" / "dpo" / "resolved.json").read_text())
        logps = {name: guarded(f"{name} pair log-probs", errors, pair_log_probs, runs / name, cache, tokenizer.pad_id)
                 for name in ("sft", "dpo")}
        if all(v is not None for v in logps.values()):
            result["dpo"] = preference(logps["sft"], logps["dpo"], float(resolved["training.dpo.beta"]))
    if "grpo" in trained:
        result["grpo_final_kl"] = last_metric(runs / "grpo", "kl")
    if "qlora" in trained:
        result["qlora_base"] = qlora_bytes(runs / "qlora")
    result["expert_load"] = {name: guarded(f"{name} expert load", errors, expert_load, runs / name)
                             for name in ("moe_aux", "moe_no_aux") if name in trained}
    return result


def qlora_bytes(run_dir: Path) -> dict | None:
    """The QLoRA run's quantised base as its executed.json records it ({"scheme", "matrices", "params",
    "bytes"}, the `base_quant` entry), or None when it records none."""
    for path in sorted(run_dir.glob("*/executed.json")):
        found = _find_key(json.loads(path.read_text()), "base_quant")
        if isinstance(found, dict) and "bytes" in found:
            return found
    return None


def _find_key(tree, key: str):  # noqa: ANN001, ANN202
    """The first value under KEY anywhere in a JSON tree."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for value in tree:
            if (found := _find_key(value, key)) is not None:
                return found
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "reasoning")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0 .. N-1, each its own data seed and run seed")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every arm's steps")
    parser.add_argument("--quick", action="store_true", help="half the steps (about 15 minutes for one seed on 2 cores)")
    args = parser.parse_args()
    out = args.out.resolve()
    scale = args.scale * (0.5 if args.quick else 1.0)
    steps = {name: str(max(2, round(n * scale))) for name, n in STEPS.items()}
    started = time.perf_counter()
    help_text = cli_flags()
    seeds: dict[int, dict] = {}
    for seed in range(args.seeds):
        seed_dir = out / f"seed{seed}"
        prepare(seed_dir, seed)
        status = train_seed(seed_dir, seed, steps, help_text)
        print(f"[seed {seed}] evaluating ...", flush=True)
        evaluation_started = time.perf_counter()
        seeds[seed] = evaluate_seed(seed_dir, status)
        seeds[seed]["evaluation_seconds"] = time.perf_counter() - evaluation_started
    result = {"seeds": seeds, "scale": scale, "quick": args.quick, "steps": steps,
              "plots": [p.name for p in plot(out, out / "seed0" / "runs")],
              "train_minutes": sum(s.get("seconds", 0) for r in seeds.values() for s in r["arms"].values()) / 60,
              "this_invocation_minutes": (time.perf_counter() - started) / 60}
    text, rows = report(result)
    result["rows"] = rows
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
