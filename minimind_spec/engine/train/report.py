"""After a stage: the loss curve as a PNG (when matplotlib is installed) and the metrics as
TensorBoard events under `STAGE_DIR/tensorboard/` (when tensorboard is installed), both read from
the stage's `metrics.jsonl` (`minimind_spec.metrics`)."""

from __future__ import annotations

from pathlib import Path

from ...metrics import METRICS_FILE, read_metrics, series

PLOT_FILE = "loss.png"
TENSORBOARD_DIR = "tensorboard"


def plot_loss(stage_dir: Path, title: str) -> Path | None:
    """Training loss per step and held-out loss where evaluated; None without matplotlib or rows."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(stage_dir / METRICS_FILE)
    if not rows:
        return None
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    axis.plot(*series(rows, "loss"), label="training loss", linewidth=1.2)
    steps, held_out = series(rows, "eval_loss")
    if steps:
        axis.plot(steps, held_out, "o-", label="held-out loss")
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
    out = stage_dir / TENSORBOARD_DIR
    with SummaryWriter(str(out)) as writer:
        for row in read_metrics(stage_dir / METRICS_FILE):
            for key, value in row.to_json().items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(key, value, row.step)
    return out
