"""`metrics.jsonl`: one typed row per optimizer step of a stage, and its one reader and writer.

The training loop writes a `MetricsRow` per step (rank 0 only); the loss plot, the TensorBoard
events, the throughput probe, the ablation study and the examples read them back with
`read_metrics`. A row holds the loop's own fields (step, loss, lr, tokens seen, tokens/s,
gradient norm; the held-out loss and perplexity on evaluation steps; the watches' warnings) and
the stage's own metrics under their names in `values` (`rewards/margins`, `aux_loss`,
`expert_tokens`, `eval_rewards/accuracies`, ...). On disk a row is one flat JSON object, so the
file reads with any JSONL tool. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class MetricsRow:
    step: int  # optimizer steps done
    loss: float  # the step's loss: its summed loss / its count (all micro-batches and processes)
    lr: float
    tokens: int  # real (non-padding) tokens trained on so far
    tokens_per_s: float | None  # this step's real tokens / its wall time
    grad_norm: float | None  # before clipping
    eval_loss: float | None = None  # on evaluation steps: the held-out loss
    eval_perplexity: float | None = None  # of a language-model objective
    warnings: tuple[str, ...] = ()
    values: Mapping[str, Any] = field(default_factory=dict)  # the stage's own metrics

    def get(self, key: str, default: Any = None) -> Any:
        """A field or one of the stage's own metrics, by its name in the file."""
        if key in _CORE:
            value = getattr(self, key)
            return default if value is None else value
        return self.values.get(key, default)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "loss": self.loss, "lr": self.lr, "tokens": self.tokens,
                               "tokens_per_s": self.tokens_per_s, "grad_norm": self.grad_norm}
        if self.eval_loss is not None:
            out["eval_loss"] = self.eval_loss
        if self.eval_perplexity is not None:
            out["eval_perplexity"] = self.eval_perplexity
        out |= dict(self.values)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "MetricsRow":
        own = {key: value for key, value in data.items() if key not in _CORE}
        return cls(step=int(data["step"]), loss=float(data["loss"]), lr=float(data["lr"]), tokens=int(data["tokens"]),
                   tokens_per_s=data.get("tokens_per_s"), grad_norm=data.get("grad_norm"), eval_loss=data.get("eval_loss"),
                   eval_perplexity=data.get("eval_perplexity"), warnings=tuple(data.get("warnings", ())), values=own)


_CORE = frozenset(f.name for f in fields(MetricsRow)) - {"values"}


def read_metrics(path: Path) -> list[MetricsRow]:
    """The rows of a metrics.jsonl, in order ([] when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(MetricsRow.from_json(json.loads(line)))
        except json.JSONDecodeError:
            if number < len(lines):
                raise
            break  # a last line cut short (the disk filled, or the run was killed mid-write): the steps before it stand
    return rows


def series(rows: list[MetricsRow], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that have `key`."""
    picked = [(row.step, row.get(key)) for row in rows if row.get(key) is not None]
    return [step for step, _ in picked], [value for _, value in picked]


class MetricsLog:
    """The writer of a stage's metrics.jsonl: `keep_until(step)` first (a resume drops the rows after its
    checkpoint, so the file reads as one uninterrupted run), then one `append` per step, flushed."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled  # False on the ranks that do not log
        self._handle: IO[str] | None = None

    def keep_until(self, step: int) -> None:
        if self.enabled and self.path.is_file():
            kept = [row for row in read_metrics(self.path) if row.step <= step]
            self.path.write_text("".join(json.dumps(row.to_json()) + "\n" for row in kept), encoding="utf-8")

    def append(self, row: MetricsRow) -> None:
        if not self.enabled:
            return
        if self._handle is None:
            self._handle = open(self.path, "a", encoding="utf-8")
        self._handle.write(json.dumps(row.to_json()) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
