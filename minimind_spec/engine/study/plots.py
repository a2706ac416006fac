"""The study's PNG plots, drawn from the study's JSON (what report.json holds).

Per ablation: the measured stage's training loss, base and ablation overlaid (every seed), and
bars of each claim's metric (mean, with the range over seeds and each seed as a dot). For the
MoE pair, the share of tokens per layer and expert as heatmaps; for the pairs that measure loss
at positions past the training length, perplexity against position.
"""

from __future__ import annotations

import math
from pathlib import Path


def draw_plots(study: dict, out: Path) -> dict[str, list[str]] | None:
    """Write the PNGs into OUT/plots; returns each ablation's plots (paths relative to OUT), or
    None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.axes import Axes
        from matplotlib.figure import Figure
    except ImportError:
        return None

    def label(ax: Axes, x: str, y: str, title: str | None = None, log: bool = False) -> None:
        if title is not None:
            ax.set_title(title)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()

    directory = out / "plots"
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[str]] = {}

    def save(fig: Figure, name: str) -> None:
        fig.tight_layout()
        fig.savefig(directory / name, dpi=100)
        plt.close(fig)
        written.setdefault(ablation["name"], []).append(f"plots/{name}")

    for ablation in study["ablations"]:
        name = ablation["name"]
        fig, ax = plt.subplots(figsize=(7, 4))
        for side, colour in (("base", "tab:blue"), ("ablation", "tab:red")):
            for i, curve in enumerate(ablation["curves"][side]):
                if curve:
                    steps, losses = zip(*curve)
                    ax.plot(steps, losses, color=colour, alpha=0.8 if i == 0 else 0.4,
                            label=(name if side == "ablation" else "base") if i == 0 else None)
        label(ax, "step", "loss", f"{name}: {ablation['measured_after']} training loss (each seed)")
        save(fig, f"{name}_loss.png")

        claims = [c for c in ablation["claims"] if c["base"] and c["ablation"]]
        if claims:
            fig, axes = plt.subplots(1, len(claims), figsize=(3.2 * len(claims), 3.6), squeeze=False)
            for ax, claim in zip(axes[0], claims):
                for x, side in enumerate(("base", "ablation")):
                    values = claim[side]["per_seed"]
                    ax.bar(x, claim[side]["mean"], color="tab:blue" if x == 0 else "tab:red", alpha=0.6,
                           yerr=[[max(0.0, claim[side]["mean"] - min(values))], [max(0.0, max(values) - claim[side]["mean"])]],
                           capsize=4)  # max(0, ...): a mean of equal values can land a rounding step outside them
                    ax.scatter([x] * len(values), values, color="black", s=10, zorder=3)
                ax.set_xticks([0, 1], ["base", name], fontsize=8)
                ax.set_title(f"{claim['metric']}\n{claim['verdict']}", fontsize=9)
            fig.suptitle(f"{name}: the claims' metrics (bar: mean; whiskers: range over seeds)", fontsize=10)
            save(fig, f"{name}_metrics.png")

        shares = ablation.get("expert_shares") or {}
        if shares.get("base") and shares.get("ablation"):
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
            for ax, side in zip(axes, ("base", "ablation")):
                image = ax.imshow(shares[side], vmin=0, aspect="auto", cmap="viridis")
                ax.set_title(f"{'base (aux loss)' if side == 'base' else name}: token share", fontsize=9)
                ax.set_xlabel("expert")
                ax.set_ylabel("MoE layer")
                ax.set_xticks(range(len(shares[side][0])))
                ax.set_yticks(range(len(shares[side])))
                fig.colorbar(image, ax=ax)
            save(fig, f"{name}_expert_load.png")

        positions = ablation.get("position_curve") or {}
        if any(positions.get("base") or []) and ablation["family"] in ("positional", "norm"):
            fig, ax = plt.subplots(figsize=(7, 4))
            for side, colour in (("base", "tab:blue"), ("ablation", "tab:red")):
                for i, curve in enumerate(positions[side]):
                    points = [(p, math.exp(v)) for p, v in (curve or []) if v is not None]  # perplexity
                    if points:
                        xs, ys = zip(*points)
                        ax.plot(xs, ys, marker="o", color=colour, alpha=0.8 if i == 0 else 0.4,
                                label=(name if side == "ablation" else "base") if i == 0 else None)
            seq_len = study["scale"].get("hyperparams", {}).get("seq_len")
            if seq_len:
                ax.axvline(seq_len, color="grey", linestyle="--", label="training seq_len")
            label(ax, "position (end of bin)", "perplexity", f"{name}: held-out perplexity against position", log=True)
            save(fig, f"{name}_context.png")
    return written
