"""report.md and report.json of an ablation study, from the study's JSON data.

Per ablation: the card's sentence, what changes on paper (the card's dimensions) and at the
study's dimensions, then each claim with base and ablation (mean, per seed), the difference,
the noise it had to exceed and the verdict; the other measured metrics follow as context.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..files import write_text_atomic
from .verdict import Verdict, overall


def _number(value: float | None) -> str:
    if value is None:
        return "n/a"
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01:
        return f"{value:.3f}"
    return f"{value:.2e}"


def _side(summary: dict | None) -> str:
    if summary is None:
        return "not measurable"
    seeds = summary["per_seed"]
    text = _number(summary["mean"])
    if len(seeds) > 1:
        text += f" ({', '.join(_number(v) for v in seeds)})"
    elif summary["error"] is not None and not summary["exact"]:
        text += f" ± {_number(summary['error'])}"
    return text


def verdict_line(ablation: dict) -> str:
    return overall([Verdict(c["verdict"]) for c in ablation["claims"]])


def render_markdown(study: dict) -> str:
    seeds = study["seeds"]
    lines = [
        f"# Ablation study: {len(study['ablations'])} ablations of {study['base']}",
        "",
        f"Task: {study['task_about']} ({study['task']}). Budget `{study['budget']}`: seeds {seeds}, steps per stage "
        f"{study['steps']} (teacher {study['teacher_steps']}, trained once with seed {seeds[0]}), device {study['device']}. "
        f"Training took {study['train_minutes_total']:.1f} min in all; this invocation {study['this_invocation_minutes']:.1f} min.",
        "",
        "Every spec is trained at the task's dimensions (its `scale`); the stages before the first one an ablation "
        "changes are the base's own runs. A claim's verdict needs the difference to exceed the noise: the larger of the "
        "range over seeds and twice the combined standard error of the measurement (0 for exact quantities).",
        "",
        "| ablation | the card expects | verdicts |",
        "|---|---|---|",
        *[f"| {a['name']} | {a['expected_effect']} | {verdict_line(a)} |" for a in study["ablations"]],
        "",
    ]
    for ablation in study["ablations"]:
        lines += [
            f"## {ablation['name']}",
            "",
            f"The card: \"{ablation['expected_effect']}\"",
            "",
            f"On paper (card dimensions, `minimind-spec diff`): {'; '.join(ablation['paper'])}.",
            f"At the study's dimensions it changes {', '.join(f'`{c}`' for c in ablation['changes']) or 'nothing'}"
            f"{' (both built as the ' + ablation['variant'] + ' variant)' if ablation['variant'] else ''}; it trains "
            f"{', '.join(ablation['trains_stages'])} itself and is measured after {ablation['measured_after']}.",
            "",
            "| claim | metric | base | ablation | difference | noise | expected | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for claim in ablation["claims"]:
            expected = "higher" if claim["expected"] > 0 else "lower"
            exact = claim["base"] is not None and claim["ablation"] is not None and claim["base"]["exact"] and claim["ablation"]["exact"]
            noise = "exact" if exact else _number(claim["noise"]) if claim["noise"] is not None else "unknown"
            difference = f"{claim['difference']:+.3g}" if claim["difference"] is not None else "n/a"
            lines.append(f"| {claim['text']} | `{claim['metric']}` | {_side(claim['base'])} | {_side(claim['ablation'])} | "
                         f"{difference} | {noise} | {expected} | **{claim['verdict']}** |")
        notes = [f"- `{c['metric']}`: {c['reading']}" for c in ablation["claims"] if c.get("reading")]
        notes += [f"- `{c['metric']}`: {c['why']}" for c in ablation["claims"] if c.get("why")]
        if notes:
            lines += ["", *notes]
        shown = {c["metric"] for c in ablation["claims"]}
        context = [(m, v) for m, v in ablation["metrics"].items() if m not in shown]
        if context:
            lines += ["", "Also measured: " + "; ".join(f"`{m}` base {_side(v['base'])}, ablation {_side(v['ablation'])}"
                                                        for m, v in context) + "."]
        plots = study.get("plots", {}).get(ablation["name"], [])
        if plots:
            lines += ["", *[f"![{Path(p).stem}]({p})" for p in plots]]
        lines.append("")
    return "\n".join(lines)


def _finite(value: object) -> object:
    """`value` with NaN and infinities as null (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_report(study: dict, out: Path) -> tuple[Path, Path]:
    markdown, data = out / "report.md", out / "report.json"
    write_text_atomic(markdown, render_markdown(study))
    write_text_atomic(data, json.dumps(_finite(study), default=str) + "\n")  # one line: the curves make it long
    return markdown, data
