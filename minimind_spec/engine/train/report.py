"""After a stage: the loss curve as a PNG (when matplotlib is installed) and the metrics as
TensorBoard events (when tensorboard is installed), both read from `metrics.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path

from .loop import METRICS_FILE

PLOT_FILE = "loss.png"


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl ([] when there is none)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _rows(stage_dir: Path) -> list[dict]:
    return read_metrics(stage_dir / METRICS_FILE)


def plot_loss(stage_dir: Path, title: str) -> Path | None:
    """Training loss per step and held-out loss where evaluated; None without matplotlib or rows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = _rows(stage_dir)
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    axis.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="training loss", linewidth=1.2)
    evaluated = [r for r in rows if "eval_loss" in r]
    if evaluated:
        axis.plot([r["step"] for r in evaluated], [r["eval_loss"] for r in evaluated], "o-", label="held-out loss")
    axis.set(xlabel="optimizer step", ylabel="loss", title=title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path = stage_dir / PLOT_FILE
    figure.savefig(path)
    plt.close(figure)
    return path


def write_tensorboard(stage_dir: Path) -> Path | None:
    """The metrics as TensorBoard scalars under `stage_dir/tensorboard`; None without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    out = stage_dir / "tensorboard"
    with SummaryWriter(str(out)) as writer:
        for row in _rows(stage_dir):
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, row["step"])
    return out
