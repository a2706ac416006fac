"""Measurements of the reasoning example's trained runs (used by run.py, one seed at a time).

- `exact_match`: greedy answers to held-out problems, the share right and the share in the
  trained format (`The answer is N`);
- `pair_log_probs`: summed log-probs of held-out chosen and rejected answers (DPO's view);
- `expert_load`: an MoE run's expert-load CV over its last steps, from its metrics.jsonl;
- `last_metric` / `stage_rows`: a run's logged metrics, wherever its stage wrote them.

Every measurement that is a share of n items comes with its standard error, so run.py can apply
the ablation study's verdict rule (`minimind_spec.study.verdict`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from minimind_spec.engine.data.chatml import render
from minimind_spec.engine.data.records import Conversation, Turn
from minimind_spec.engine.export import load_model
from minimind_spec.engine.train.stages.batches import collate_pairs
from minimind_spec.metrics import read_metrics
from minimind_spec.model_files import find_model
from builders.techniques import sequence_log_probs

ANSWER = re.compile(r"The answer is (-?\d+)")


def share_error(p: float, n: int) -> float:
    """The standard error of a share p measured on n items."""
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def stage_rows(run_dir: Path, stage: str | None = None) -> list:
    """The metrics of STAGE in RUN_DIR; without a stage, of the run's only (or last written) stage."""
    if stage is not None:
        return read_metrics(run_dir / stage / "metrics.jsonl")
    found = sorted(run_dir.glob("*/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
    return read_metrics(found[-1]) if found else []


def last_metric(run_dir: Path, key: str, stage: str | None = None) -> float | None:
    """The last logged value of KEY (None when the run never logged it)."""
    values = [row.get(key) for row in stage_rows(run_dir, stage) if row.get(key) is not None]
    return float(values[-1]) if values else None


@torch.no_grad()
def exact_match(model_path: Path, tokenizer, problems: list[dict], batch: int = 50,  # noqa: ANN001
                max_new_tokens: int = 48) -> dict[str, float]:
    """Greedy answers to PROBLEMS ({"prompt", "answer"}): exact match and answer format, each with its SE."""
    files = find_model(model_path)
    model = load_model(files.config, files.weights).eval()
    right = formatted = 0
    for start in range(0, len(problems), batch):
        chunk = problems[start:start + batch]
        encoded = [tokenizer.encode(render(Conversation((Turn("user", p["prompt"]),)), add_generation_prompt=True))
                   for p in chunk]
        width = max(len(ids) for ids in encoded)
        ids = torch.tensor([[tokenizer.pad_id] * (width - len(e)) + e for e in encoded])  # (B, T) left-padded
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        output = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_id,
                                pad_token_id=tokenizer.pad_id)
        for problem, row in zip(chunk, output[:, width:].tolist()):
            text = tokenizer.decode([t for t in row if t not in (tokenizer.pad_id, tokenizer.eos_id)])
            found = ANSWER.search(text)
            formatted += found is not None
            right += found is not None and int(found.group(1)) == int(problem["answer"])
    n = len(problems)
    return {"exact_match": right / n, "exact_match_se": share_error(right / n, n),
            "answer_format": formatted / n, "n": n}


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


def preference(sft: np.ndarray, dpo: np.ndarray, beta: float) -> dict[str, float]:
    """Held-out DPO measurements from the pairs' log-probs under the SFT model (the reference) and the DPO model."""
    n = len(sft)
    accuracy = {name: float((lp[:, 0] > lp[:, 1]).mean()) for name, lp in (("sft", sft), ("dpo", dpo))}
    ratio = dpo - sft
    margins = beta * (ratio[:, 0] - ratio[:, 1])
    return {"preference_accuracy_sft": accuracy["sft"], "preference_accuracy_sft_se": share_error(accuracy["sft"], n),
            "preference_accuracy_dpo": accuracy["dpo"], "preference_accuracy_dpo_se": share_error(accuracy["dpo"], n),
            "margin": float(margins.mean()), "margin_se": float(margins.std(ddof=1) / math.sqrt(n)),
            "reward_accuracy": float((margins > 0).mean()),
            "logp_chosen_sft": float(sft[:, 0].mean()), "logp_chosen_dpo": float(dpo[:, 0].mean()), "beta": beta, "n": n}


def expert_load(run_dir: Path, last: int = 50) -> dict[str, float]:
    """An MoE pretraining run's load over its last steps: mean CV (with the SE over those steps), the
    worst layer's mean CV, the least-loaded expert's share of its fair share."""
    rows = stage_rows(run_dir, "pretrain")[-last:]
    per_step = np.array([row.get("expert_load_cv_per_layer") for row in rows])  # (steps, layers)
    tokens = np.sum([row.get("expert_tokens") for row in rows], axis=0)  # (layers, experts)
    fair = tokens.sum(axis=1, keepdims=True) / tokens.shape[1]
    step_means = per_step.mean(axis=1)
    return {"mean_cv": float(step_means.mean()), "mean_cv_se": float(step_means.std(ddof=1) / math.sqrt(len(rows))),
            "worst_layer_cv": float(per_step.mean(axis=0).max()), "least_expert_share_of_fair": float((tokens / fair).min())}
