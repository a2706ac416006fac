"""Run an ablation study end to end: data, tokenizer, training runs, measurements, verdicts.

`run_study` returns the study as plain JSON data (what `report.json` holds), after writing
report.md and the PNG plots into the study directory. Every step skips what an earlier
invocation finished: the data and tokenizer are made once, runs are keyed (see `runs`), and
each run's measurements are kept beside it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ...errors import InputError
from ...study.design import Ablation, design_study, resolved_spec, teacher_spec, trainable_percent
from ...study.report import write_report
from ...study.runs import StageRun, base_arm, execute, inputs_digest, make_data, plan_runs, train_seconds
from ...study.task import Budget, Task, load_task
from ...study.verdict import Measure, compare
from ..data.tokenizer import load_tokenizer, train_tokenizer
from ..export import load_model
from ...model_files import find_model
from ...metrics import read_metrics
from . import evaluate as ev
from .plots import draw_plots

MEASURE_VERSION = 3
UNMEASURABLE = {  # why a metric can have no value
    "loss_2x": "positions it cannot represent", "loss_4x": "positions it cannot represent",
    "think_step_accuracy": "its answers wrote no `a + b = c` steps",
    "answer_loss": "seq_len cuts every held-out answer off",
}  # part of each run's measurement cache key: raise it when a measurement changes
CURVE_METRICS = {"step_seconds", "loss_spikes", "grad_norm_variance", "divergence_warnings"}


def make_tokenizer(task: Task, data: Path, digest: str, out: Path) -> Path:
    """The study's tokenizer in OUT/tokenizer, trained once per data and vocabulary size."""
    directory = out / "tokenizer"
    stamp = json.dumps({"vocab": task.tokenizer_vocab, "data": digest})
    made = directory / "made_by.json"
    made_by = made.read_text() if made.is_file() else stamp  # unstamped: made by an earlier version
    if not (directory / "tokenizer.json").is_file() or made_by != stamp:
        shutil.rmtree(directory, ignore_errors=True)
        train_tokenizer([data / "pretrain.jsonl", data / "sft.jsonl"], task.tokenizer_vocab, directory)
    made.write_text(stamp)
    return directory


def trainable_share(run: StageRun) -> ev.Value:
    """Trainable parameters of the run's stage over all parameters, from the plan (exact)."""
    return ev.Value(trainable_percent(resolved_spec(run.spec, run.variant), run.stage), exact=True)


def measure(run: StageRun, metrics: tuple[str, ...], held: ev.HeldOut) -> dict:
    """The metrics of one trained run (cached beside it): {"values": {name: [value, error, exact] or None}, extras}."""
    wanted = sorted(set(metrics))
    cache = run.directory / f"measured.{hashlib.sha256(json.dumps([MEASURE_VERSION, wanted]).encode()).hexdigest()[:8]}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    files = find_model(run.final)
    model = load_model(files.config, files.weights).eval()
    seq_len = resolved_spec(run.spec, run.variant).model.seq_len
    values: dict[str, ev.Value | None] = {}
    extras: dict[str, object] = {}
    if {"loss_1x", "loss_2x", "loss_4x"} & set(wanted):
        losses, extras["position_curve"] = ev.position_losses(model, held, seq_len)
        values |= losses
    if {"mixed_loss", "general_loss"} & set(wanted):
        values |= ev.domain_losses(model, held, seq_len)
    if "answer_loss" in wanted:
        values["answer_loss"] = ev.answer_loss(model, held)
    if {"exact_match", "think_step_accuracy"} & set(wanted):
        values |= ev.answers(model, held)
    if {"preference_accuracy", "logratio_margin", "kl_to_reference"} & set(wanted):
        assert run.init is not None
        reference_files = find_model(run.init.final)
        values |= ev.preference(model, load_model(reference_files.config, reference_files.weights).eval(), held)
    if "expert_load_cv" in wanted:
        load, extras["expert_shares"] = ev.expert_load(model, held, seq_len)
        values |= load
    if "norm_saved_bytes_per_token" in wanted:
        values["norm_saved_bytes_per_token"] = ev.norm_saved_bytes(model, seq_len)
    rows = read_metrics(run.metrics)
    if CURVE_METRICS & set(wanted):
        values |= ev.training_curve(rows)
    if "trainable_share" in wanted:
        values["trainable_share"] = trainable_share(run)
    extras["loss_curve"] = ev.curve_points(rows)
    result = {"values": {k: None if v is None else [v.value, v.error, v.exact] for k, v in values.items()}, **extras,
              "train_seconds": train_seconds(run)}
    cache.write_text(json.dumps(result) + "\n")
    return result


def _measure_of(rows: list[dict], metric: str) -> Measure | None:
    entries = [row["values"].get(metric) for row in rows]
    if any(e is None for e in entries):
        return None
    return Measure(tuple(e[0] for e in entries), tuple(e[1] for e in entries), exact=all(e[2] for e in entries))


def _summary(measure: Measure | None) -> dict | None:
    if measure is None:
        return None
    return {"mean": measure.mean, "per_seed": list(measure.values), "spread": measure.spread, "error": measure.error,
            "exact": measure.exact}


def compare_ablation(ablation: Ablation, base_rows: list[dict], ablation_rows: list[dict]) -> dict:
    """Per claim: both sides over seeds, the difference, the noise it had to exceed, the verdict."""
    claims = []
    for claim in ablation.claims:
        base, ablated = _measure_of(base_rows, claim.metric), _measure_of(ablation_rows, claim.metric)
        entry = {**asdict(claim), "base": _summary(base), "ablation": _summary(ablated)}
        if base is None or ablated is None:
            side = "the base" if base is None else "the ablation"
            entry |= {"verdict": "not observed", "noise": None, "difference": None,
                      "why": f"{side} has no value in some seed: {UNMEASURABLE.get(claim.metric, 'not measurable for it')}"}
        else:
            result = compare(base, ablated, claim.expected)
            entry |= {"verdict": str(result.verdict), "noise": result.noise, "difference": result.difference}
            if result.noise is None:
                entry["why"] = "one seed and no standard error: nothing to measure the difference against"
        claims.append(entry)
    context = {}
    for metric in sorted({m for row in base_rows + ablation_rows for m in row["values"]}):
        context[metric] = {"base": _summary(_measure_of(base_rows, metric)), "ablation": _summary(_measure_of(ablation_rows, metric))}
    return {"claims": claims, "metrics": context}


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies under it (reports do not name the checkout's place)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run_study(base: Path, ablation_paths: list[Path], task_dir: Path, budget_name: str, out: Path, device: str = "auto",
              jobs: int = 1, say: Callable[[str], None] = print, budget_override: Budget | None = None) -> dict:
    """Design, train (what is not done yet), measure, judge, plot and report; returns the report's data."""
    started = time.perf_counter()
    task = load_task(task_dir)
    budget = budget_override or task.budget(budget_name)
    out.mkdir(parents=True, exist_ok=True)
    ablations = design_study(base, ablation_paths, task, out)
    plan_runs(ablations, budget, teacher_spec(task, out), out, "")  # a budget without a needed stage fails here, early
    data, data_hash = make_data(task, out)
    tokenizer_dir = make_tokenizer(task, data, data_hash, out)
    study = plan_runs(ablations, budget, teacher_spec(task, out), out, inputs_digest(data_hash, tokenizer_dir))
    total = len(study.runs)
    count = {"n": 0}

    def report(run: StageRun, what: str) -> None:
        if what not in ("training", "resuming"):
            count["n"] += 1
        say(f"[{count['n']}/{total}] {run.label}: {what}")

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    execute(study, data, tokenizer_dir, device, jobs, report)
    unfinished = [run.label for run in study.runs.values() if not run.done]
    if unfinished:
        raise InputError(f"{len(unfinished)} runs did not finish ({unfinished[0]}, ...): the same command resumes them")
    say("measuring ...")
    tokenizer = load_tokenizer(tokenizer_dir)
    held = {}
    results = []
    for ablation in ablations:
        stage = ablation.measured_after
        seq_len = resolved_spec(ablation.spec, ablation.variant).model.seq_len
        if seq_len not in held:
            held[seq_len] = ev.HeldOut.load(data, tokenizer, seq_len)
        metrics = tuple(ablation.family.metrics)
        base_rows = [measure(study.get(base_arm(ablation), stage, s), metrics,
                             held[seq_len]) for s in budget.seeds]
        ablation_rows = [measure(study.get(ablation.name, stage, s), metrics, held[seq_len]) for s in budget.seeds]
        results.append({
            "name": ablation.name, "source": str(ablation.source), "expected_effect": ablation.expected_effect,
            "family": ablation.family.name, "measured_after": stage, "variant": ablation.variant,
            "trains_stages": list(ablation.stages), "changes": list(ablation.changes), "paper": list(ablation.paper),
            "kept_from_ablation": list(ablation.kept_from_ablation),
            **compare_ablation(ablation, base_rows, ablation_rows),
            "curves": {side: [[[step, round(loss, 4)] for step, loss in r["loss_curve"]] for r in rows]
                       for side, rows in (("base", base_rows), ("ablation", ablation_rows))},
            "position_curve": {"base": [r.get("position_curve") for r in base_rows],
                               "ablation": [r.get("position_curve") for r in ablation_rows]},
            "expert_shares": {"base": base_rows[0].get("expert_shares"), "ablation": ablation_rows[0].get("expert_shares")},
        })
    seconds = {f"{run.arm}.{run.stage}.seed{run.seed}": train_seconds(run) for run in study.runs.values()}
    study_json = {
        "base": str(base), "task": _shown(task.directory), "task_about": task.about, "budget": budget.name,
        "seeds": list(budget.seeds), "steps": budget.steps, "teacher_steps": budget.teacher_steps, "device": device,
        "scale": task.scale, "ablations": results, "train_seconds": seconds,
        "train_minutes_total": sum(v for v in seconds.values() if v is not None) / 60,
        "this_invocation_minutes": (time.perf_counter() - started) / 60,
    }
    plots = draw_plots(study_json, out)
    if plots is None:
        say("matplotlib is not installed: no plots (pip install matplotlib, or the package's [plots] extra)")
    study_json["plots"] = plots or {}
    write_report(study_json, out)
    return study_json
