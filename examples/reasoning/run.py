"""The technique blocks proved on a task: train a tiny MiniMind through the plan on two-step
arithmetic word problems and measure, on held-out problems, what each technique does.

One command, on a CPU:

    python examples/reasoning/run.py [--out out/reasoning] [--seed 0] [--scale 1.0]

It writes the data (`make_data.py`), trains a tokenizer, then runs `minimind-spec train` for
each arm below (every run an ordinary run directory), evaluates, and writes `results.md`,
`results.json` and PNG loss curves into OUT. The student and teacher specs extend the card's
(`spec/minimind.json`, `spec/larger_model.json`) with tiny dimensions.

| arm | what |
|---|---|
| base | student pretraining |
| sft | base + full SFT |
| dpo | sft + DPO (full, a frozen copy as reference) |
| teacher | teacher pretraining + SFT (the larger spec) |
| distill | base + distillation from the teacher, as many steps as sft |
| lora | base + SFT of LoRA r=8 adapters on q_proj, v_proj (the card's recipe), as many steps as sft |
| moe_aux / moe_no_aux | MoE student pretraining with and without the balance loss |

Results (a)-(e): (a) SFT raises exact-match accuracy over the base; (b) DPO raises held-out
preference accuracy and reward margin without losing SFT accuracy; (c) the distilled student
beats the SFT student; (d) LoRA recovers most of full fine-tuning's gain; (e) the aux loss keeps
expert load balanced. Each is reported with its numbers, whichever way it comes out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from minimind_spec.engine.data.chatml import render  # noqa: E402
from minimind_spec.engine.data.records import Conversation, Turn  # noqa: E402
from minimind_spec.engine.data.token_cache import build_token_cache  # noqa: E402
from minimind_spec.engine.data.tokenizer import load_tokenizer  # noqa: E402
from minimind_spec.engine.export import load_model  # noqa: E402
from minimind_spec.model_files import find_model  # noqa: E402
from minimind_spec.engine.train.stages.batches import collate_pairs  # noqa: E402
from minimind_spec.metrics import read_metrics, series  # noqa: E402
from builders.techniques import sequence_log_probs  # noqa: E402

ANSWER = re.compile(r"The answer is (-?\d+)")
DPO_BETA = 0.1  # the card's (spec/minimind.json techniques.dpo.beta)


def train(out: Path, spec: str, name: str, *flags: str) -> Path:
    """One `minimind-spec train` run into OUT/runs/NAME (skipped when it already finished)."""
    run_dir = out / "runs" / name
    done = run_dir / ".done"
    if done.is_file():
        print(f"[{name}] already trained: {run_dir}")
        return run_dir
    command = [sys.executable, "-m", "minimind_spec", "train", str(HERE / spec), "--tokenizer", str(out / "tokenizer"),
               "--out", str(run_dir), "--no-progress", "--eval-every", "100", "--save-every", "100", "--seed", "0", *flags]
    if run_dir.exists():
        command.append("--resume")
    started = time.perf_counter()
    print(f"[{name}] {' '.join(command[2:])}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    done.write_text(f"{time.perf_counter() - started:.1f}\n")
    return run_dir


def metrics(run_dir: Path, stage: str) -> list:
    return read_metrics(run_dir / stage / "metrics.jsonl")


@torch.no_grad()
def exact_match(model_path: Path, tokenizer, problems: list[dict], batch: int = 50) -> tuple[float, float]:  # noqa: ANN001
    """(share of held-out problems whose greedy answer is right, share of answers in the trained format)."""
    files = find_model(model_path)
    model = load_model(files.config, files.weights).eval()
    right = formatted = 0
    for start in range(0, len(problems), batch):
        chunk = problems[start:start + batch]
        encoded = [tokenizer.encode(render(Conversation((Turn("user", p["prompt"]),)), add_generation_prompt=True))
                   for p in chunk]
        width = max(len(ids) for ids in encoded)
        ids = torch.tensor([[tokenizer.pad_id] * (width - len(e)) + e for e in encoded])  # left-padded
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        output = model.generate(ids, attention_mask=mask, max_new_tokens=48, eos_token_id=tokenizer.eos_id,
                                pad_token_id=tokenizer.pad_id)
        for problem, row in zip(chunk, output[:, width:].tolist()):
            text = tokenizer.decode([t for t in row if t not in (tokenizer.pad_id, tokenizer.eos_id)])
            found = ANSWER.search(text)
            formatted += found is not None
            right += found is not None and int(found.group(1)) == problem["answer"]
    return right / len(problems), formatted / len(problems)


@torch.no_grad()
def pair_log_probs(model_path: Path, cache, pad_id: int) -> np.ndarray:  # noqa: ANN001
    """(pairs, 2) summed log-probs of the chosen and rejected responses."""
    files = find_model(model_path)
    model = load_model(files.config, files.weights).eval()
    pairs = np.arange(len(cache) // 2).tolist()
    out = []
    for start in range(0, len(pairs), 32):
        batch = collate_pairs(cache, pairs[start:start + 32], pad_id, "cpu")
        out.append(sequence_log_probs(model(batch.input_ids).logits, batch.labels).view(-1, 2).double().numpy())
    return np.concatenate(out)


def expert_cv(run_dir: Path, last: int = 50) -> tuple[float, float, float]:
    """(mean load CV over the last steps, the worst layer's mean CV, the least-loaded expert's share of fair) ."""
    rows = metrics(run_dir, "pretrain")[-last:]
    per_layer = np.mean([row.get("expert_load_cv_per_layer") for row in rows], axis=0)
    tokens = np.sum([row.get("expert_tokens") for row in rows], axis=0)  # (layers, E)
    fair = tokens.sum(axis=1, keepdims=True) / tokens.shape[1]
    return float(per_layer.mean()), float(per_layer.max()), float((tokens / fair).min())


def plot(out: Path, runs: dict[str, Path]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG plots (pip install matplotlib)")
        return []

    def curve(ax, run_dir, stage, key, label):  # noqa: ANN001, ANN202
        ax.plot(*series(metrics(run_dir, stage), key), label=label)

    written = []
    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    curve(axes[0], runs["base"], "pretrain", "loss", "pretrain loss")
    curve(axes[1], runs["sft"], "sft", "loss", "full SFT")
    curve(axes[1], runs["lora"], "sft", "loss", "LoRA r=8 (q_proj, v_proj)")
    curve(axes[1], runs["distill"], "distill", "lm_loss", "distilled student (label CE)")
    curve(axes[2], runs["dpo"], "dpo", "rewards/margins", "DPO reward margin")
    curve(axes[2], runs["dpo"], "dpo", "rewards/accuracies", "DPO reward accuracy")
    curve(axes[3], runs["dpo"], "dpo", "logps/chosen", "log p(chosen)")
    curve(axes[3], runs["dpo"], "dpo", "logps/rejected", "log p(rejected)")
    titles = ("student pretraining", "fine-tuning: loss on the SFT data", "DPO (beta 0.1): rewards",
              "DPO: response log-probs of the policy")
    for ax, title in zip(axes, titles):
        ax.set_title(title), ax.set_xlabel("step"), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=110)
    written.append(out / "losses.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    curve(ax, runs["moe_aux"], "pretrain", "expert_load_cv", "with aux loss")
    curve(ax, runs["moe_no_aux"], "pretrain", "expert_load_cv", "without aux loss")
    ax.set_title("MoE expert-load CV (mean over layers)"), ax.set_xlabel("step"), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "expert_load.png", dpi=110)
    written.append(out / "expert_load.png")
    plt.close("all")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "reasoning")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data (the runs use seed 0)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every run's steps (0.1 for a smoke run)")
    args = parser.parse_args()
    out = args.out.resolve()
    started = time.perf_counter()
    steps = {name: str(max(2, round(n * args.scale))) for name, n in
             {"pretrain": 600, "sft": 300, "dpo": 150, "teacher": 600, "moe": 300}.items()}
    data = out / "data"
    if not (data / "eval_pairs.jsonl").is_file():
        subprocess.run([sys.executable, str(HERE / "make_data.py"), str(data), "--seed", str(args.seed)], check=True)
    if not (out / "tokenizer" / "tokenizer.json").is_file():
        subprocess.run([sys.executable, "-m", "minimind_spec", "tokenizer", "train", str(data / "pretrain.jsonl"),
                        str(data / "sft.jsonl"), "--vocab-size", "384", "--out", str(out / "tokenizer")], check=True, cwd=ROOT)
    pretrain, sft, pairs = (["--pretrain-data", str(data / "pretrain.jsonl")], ["--sft-data", str(data / "sft.jsonl")],
                            ["--dpo-data", str(data / "pairs.jsonl")])
    runs: dict[str, Path] = {}
    runs["base"] = train(out, "student.json", "base", "--stage", "pretrain", *pretrain, "--max-steps", steps["pretrain"])
    init = ["--init", str(runs["base"] / "pretrain")]
    runs["sft"] = train(out, "student.json", "sft", "--stage", "sft", "--no-lora", *init, *sft, "--max-steps", steps["sft"])
    runs["dpo"] = train(out, "student.json", "dpo", "--stage", "dpo", "--no-lora", "--init", str(runs["sft"]), *pairs,
                        "--max-steps", steps["dpo"])  # the DPO recipe's lr (1e-6, trl's default): the spec sets none
    runs["teacher"] = train(out, "teacher.json", "teacher", *pretrain, *sft, "--max-steps", steps["teacher"])
    runs["distill"] = train(out, "student.json", "distill", "--stage", "distill", "--no-lora", *init, "--teacher",
                            str(runs["teacher"]), "--distill-data", str(data / "sft.jsonl"), "--max-steps", steps["sft"])
    runs["lora"] = train(out, "student.json", "lora", "--stage", "lora", "--lora-rank", "8", "--lora-targets", "q_proj,v_proj",
                         *init, *sft, "--max-steps", steps["sft"])
    runs["moe_aux"] = train(out, "student.json", "moe_aux", "--variant", "MoE", "--stage", "pretrain", *pretrain,
                            "--max-steps", steps["moe"])
    runs["moe_no_aux"] = train(out, "student_moe_no_aux.json", "moe_no_aux", "--variant", "MoE", "--stage", "pretrain",
                               *pretrain, "--max-steps", steps["moe"])

    print("evaluating on held-out problems ...", flush=True)
    evaluation_started = time.perf_counter()
    tokenizer = load_tokenizer(out / "tokenizer")
    problems = [json.loads(line) for line in (data / "eval.jsonl").read_text().splitlines()]
    accuracy = {name: exact_match(runs[name], tokenizer, problems) for name in ("base", "sft", "dpo", "teacher", "distill", "lora")}
    cache = build_token_cache(data / "eval_pairs.jsonl", tokenizer, "preference", out / "cache", max_length=128)
    logps = {name: pair_log_probs(runs[name], cache, tokenizer.pad_id) for name in ("sft", "dpo")}
    preference = {name: float((lp[:, 0] > lp[:, 1]).mean()) for name, lp in logps.items()}
    ratio = logps["dpo"] - logps["sft"]  # the DPO policy against its reference, the SFT model
    margins = DPO_BETA * (ratio[:, 0] - ratio[:, 1])
    moe = {name: expert_cv(runs[name]) for name in ("moe_aux", "moe_no_aux")}
    lora_rows = metrics(runs["lora"], "sft")
    trained = json.loads((runs["lora"] / "sft" / "resolved.json").read_text())
    result = {
        "seed": args.seed, "scale": args.scale, "steps": steps,
        "exact_match": {name: a for name, (a, _) in accuracy.items()},
        "answer_format": {name: f for name, (_, f) in accuracy.items()},
        "preference_accuracy": preference, "dpo_heldout_margin": float(margins.mean()),
        "dpo_heldout_reward_accuracy": float((margins > 0).mean()),
        "expert_load": {name: {"mean_cv": m, "worst_layer_cv": w, "least_expert_share_of_fair": s}
                        for name, (m, w, s) in moe.items()},
        "final_loss": {"sft": metrics(runs["sft"], "sft")[-1].loss, "lora": lora_rows[-1].loss,
                       "distill_lm": metrics(runs["distill"], "distill")[-1].get("lm_loss")},
        "lora_targets": [v for k, v in trained.items() if k.startswith("model.lora.targets")],
        "train_seconds": {name: float((path / ".done").read_text()) for name, path in runs.items()},
    }
    result["plots"] = [str(p.name) for p in plot(out, runs)]
    result["evaluation_seconds"] = time.perf_counter() - evaluation_started
    result["minutes"] = (sum(result["train_seconds"].values()) + result["evaluation_seconds"]) / 60  # runs cached on a rerun
    result["this_invocation_minutes"] = (time.perf_counter() - started) / 60
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(report(result))
    print(report(result))


def report(r: dict) -> str:
    em, pa, moe = r["exact_match"], r["preference_accuracy"], r["expert_load"]
    gain_full, gain_lora = em["sft"] - em["base"], em["lora"] - em["base"]
    recovered = f"{gain_lora / gain_full:.0%}" if gain_full > 0 else "n/a (full SFT gained nothing)"
    lines = [
        f"Held-out: 200 problems on 60 (a, b, c) triples no SFT problem or pair uses; greedy decoding. Data seed {r['seed']}, "
        f"run seed 0, steps {r['steps']} (scale {r['scale']}); {r['minutes']:.1f} min of training and evaluation.",
        "",
        "| model | exact match | answers in the trained format |",
        "|---|---|---|",
        *[f"| {name} | {em[name]:.1%} | {r['answer_format'][name]:.1%} |" for name in em],
        "",
        "| result | measured | as expected? |",
        "|---|---|---|",
        f"| (a) SFT raises exact match over the base | base {em['base']:.1%} -> sft {em['sft']:.1%} | "
        f"{'yes' if em['sft'] > em['base'] else 'no'} |",
        f"| (b) DPO raises preference accuracy and margin, keeps SFT accuracy | preference accuracy (log p chosen > rejected) "
        f"sft {pa['sft']:.1%} -> dpo {pa['dpo']:.1%}; held-out reward margin {r['dpo_heldout_margin']:+.3f} "
        f"(reward accuracy {r['dpo_heldout_reward_accuracy']:.1%}); exact match {em['sft']:.1%} -> {em['dpo']:.1%} | "
        f"{'yes' if pa['dpo'] > pa['sft'] and r['dpo_heldout_margin'] > 0 and em['dpo'] >= em['sft'] - 0.02 else 'no'} |",
        f"| (c) the distilled student beats the student trained without the teacher | teacher {em['teacher']:.1%}; "
        f"distilled {em['distill']:.1%} vs sft {em['sft']:.1%} (same init and steps) | "
        f"{'yes' if em['distill'] > em['sft'] else 'no'} |",
        f"| (d) LoRA r=8 recovers most of full fine-tuning's gain | lora {em['lora']:.1%} vs full {em['sft']:.1%} over base "
        f"{em['base']:.1%}: {recovered} of the gain | {'yes' if gain_full > 0 and gain_lora >= 0.5 * gain_full else 'no'} |",
        f"| (e) with the aux loss expert load stays balanced, without it not | load CV (mean / worst layer) with aux "
        f"{moe['moe_aux']['mean_cv']:.3f} / {moe['moe_aux']['worst_layer_cv']:.3f}, without "
        f"{moe['moe_no_aux']['mean_cv']:.3f} / {moe['moe_no_aux']['worst_layer_cv']:.3f}; least-loaded expert "
        f"{moe['moe_aux']['least_expert_share_of_fair']:.0%} vs {moe['moe_no_aux']['least_expert_share_of_fair']:.0%} of its "
        f"fair share | {'yes' if moe['moe_aux']['mean_cv'] < moe['moe_no_aux']['mean_cv'] else 'no'} |",
        "",
        "Training seconds per arm: " + ", ".join(f"{k} {v:.0f}" for k, v in r["train_seconds"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
