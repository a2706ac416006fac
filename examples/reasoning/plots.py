"""The reasoning example's PNG curves, from one seed's runs (run.py draws seed 0's):

- `losses.png`: pretraining loss; SFT loss of full SFT, both from-base LoRA arms and the
  distilled student; DPO reward margin and accuracy; DPO log p(chosen) and log p(rejected);
  GRPO reward and KL (each panel drawn from the arms that trained);
- `expert_load.png`: MoE expert-load CV with and without the aux loss.
"""

from __future__ import annotations

from pathlib import Path

from measure import stage_rows
from minimind_spec.metrics import series

PANELS = [  # (title, [(arm, stage or None for the run's only stage, metric key, label)])
    ("student pretraining", [("base", "pretrain", "loss", "pretrain loss")]),
    ("fine-tuning: loss on the SFT data", [("sft", "sft", "loss", "full SFT"),
                                           ("lora_plain", None, "loss", "LoRA r=8, embeddings frozen"),
                                           ("lora_tokens", None, "loss", "LoRA r=8, special tokens trained"),
                                           ("distill", "distill", "lm_loss", "distilled student (label CE)")]),
    ("DPO: rewards", [("dpo", "dpo", "rewards/margins", "reward margin"),
                      ("dpo", "dpo", "rewards/accuracies", "reward accuracy")]),
    ("DPO: response log-probs of the policy", [("dpo", "dpo", "logps/chosen", "log p(chosen)"),
                                               ("dpo", "dpo", "logps/rejected", "log p(rejected)")]),
    ("GRPO: reward and KL", [("grpo", None, "reward", "mean reward"), ("grpo", None, "kl", "KL to the reference")]),
]


def _curve(ax, runs: Path, arm: str, stage: str | None, key: str, label: str) -> bool:  # noqa: ANN001
    """Draw one curve; False when the arm did not train or never logged KEY."""
    if not (runs / arm / ".done").is_file():
        return False
    steps, values = series(stage_rows(runs / arm, stage), key)
    if not len(steps):
        return False
    ax.plot(steps, values, label=label)
    return True


def plot(out: Path, runs: Path) -> list[Path]:
    """Write the PNGs into OUT from the runs under RUNS; returns what was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG plots (pip install matplotlib)")
        return []
    written = []
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4))
    for ax, (title, curves) in zip(axes, PANELS):
        drawn = [_curve(ax, runs, *c) for c in curves]
        ax.set_title(title if any(drawn) else f"{title} (not trained)")
        ax.set_xlabel("step"), ax.grid(alpha=0.3)
        if any(drawn):
            ax.legend()
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=110)
    written.append(out / "losses.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = [_curve(ax, runs, "moe_aux", "pretrain", "expert_load_cv", "with aux loss"),
             _curve(ax, runs, "moe_no_aux", "pretrain", "expert_load_cv", "without aux loss")]
    ax.set_title("MoE expert-load CV (mean over layers)"), ax.set_xlabel("step"), ax.grid(alpha=0.3)
    if any(drawn):
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "expert_load.png", dpi=110)
    written.append(out / "expert_load.png")
    plt.close("all")
    return written
