"""`ablate`: train a base spec and its ablations on a task and test each ablation's expected effect."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .app import app, console, err_console, guarded, print_json

if TYPE_CHECKING:
    from ..study.task import Budget, Task

DEFAULT_TASK = Path(__file__).resolve().parents[2] / "examples" / "reasoning"


@app.command("ablate")
@guarded
def ablate_command(
    base: Annotated[Path, typer.Argument(metavar="BASE", help="The base spec, e.g. spec/minimind.json.", show_default=False)],
    ablations: Annotated[list[Path], typer.Argument(metavar="ABLATION", help="Ablation specs (each with an \"ablation\" block), e.g. "
                                                    "spec/ablations/*.json.", show_default=False)],
    task: Annotated[Path, typer.Option("--task", help="Task directory with a task.json: data script, the dimensions "
                                       "every spec is trained at, budgets.", show_default="examples/reasoning")] = DEFAULT_TASK,
    quick: Annotated[bool, typer.Option("--quick", help="The task's quick budget (one seed, fewer steps) instead of "
                                        "the full study.")] = False,
    seeds: Annotated[int | None, typer.Option("--seeds", min=1, max=64, help="Train this many seeds (0, 1, ...) "
                                              "instead of the budget's.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Study directory: specs/, data/, runs/, report.md, "
                                      "report.json, plots/.")] = Path("out/ablations"),
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, max=64, help="Training processes at once (the cores "
                                      "are shared between them).")] = 1,
    device: Annotated[str, typer.Option("--device", help="auto (cuda if present, else cpu), cpu or cuda.")] = "auto",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the design (pairs, families, claims, stages, "
                                          "runs) and stop: writes OUT/specs/, trains nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print report.json to stdout when done.")] = False,
) -> None:
    """Train a spec and its ablations on a task and test each ablation's expected effect.

    BASE and each ABLATION go through the same plan, data, seeds and budget; each ablation is
    measured on the metrics its `expected_effect` speaks of, and each claim is called confirmed,
    not observed or contradicted (only a difference beyond the seed spread and the
    measurement's error counts).

    Every spec is shrunk to the task's dimensions (`scale` in task.json). Stages before the first
    one an ablation changes are shared with the base. Runs are keyed by spec, seed and budget: an
    interrupted study resumes where it stopped, and a finished run is never trained twice.

    Writes OUT/report.md (verdicts with the numbers beside the card's sentence), OUT/report.json
    and OUT/plots/*.png. Example: `minimind-spec ablate spec/minimind.json spec/ablations/*.json --quick`.
    """
    from ..study.task import load_task

    task_data = load_task(task)
    budget = task_data.budget("quick" if quick else "full")
    if seeds is not None:
        chosen = list(budget.seeds[:seeds]) + [s for s in range(1000) if s not in budget.seeds][:max(0, seeds - len(budget.seeds))]
        budget = type(budget)(budget.name, tuple(chosen), budget.steps, budget.teacher_steps)
    if dry_run:
        _print_design(base, ablations, task_data, budget, out)
        return
    from ..engine.study.study import run_study

    say = err_console.print if as_json else console.print
    try:
        result = run_study(base, ablations, task, budget.name, out, device=device, jobs=jobs,
                           say=lambda m: say(m, markup=False), budget_override=budget)
    except KeyboardInterrupt:
        err_console.print("interrupted: a run in flight keeps its last checkpoint; the same command resumes the study")
        raise typer.Exit(130) from None
    if as_json:
        print_json(result)
        return
    from ..study.report import verdict_line

    for ablation in result["ablations"]:
        console.print(f"{ablation['name']}: {verdict_line(ablation)}", markup=False)
    console.print(f"report: {out / 'report.md'} (plots in {out / 'plots'})", markup=False)


def _print_design(base: Path, ablations: list[Path], task: "Task", budget: "Budget", out: Path) -> None:
    """The pairs, families, claims and runs, with which runs are already done (when the data exists)."""
    from ..study.design import design_study, teacher_spec
    from ..study.runs import base_arm, data_digest, inputs_digest, plan_runs

    designed = design_study(base, ablations, task, out)
    console.print(f"budget {budget.name}: seeds {list(budget.seeds)}, steps {budget.steps}", markup=False)
    for a in designed:
        console.print(f"{a.name} ({a.family.name}; vs {base_arm(a)}): "
                      f"trains {', '.join(a.stages)}, measured after {a.measured_after}", markup=False)
        for claim in a.claims:
            console.print(f"  - {claim.text}: `{claim.metric}` expected {'higher' if claim.expected > 0 else 'lower'}",
                          markup=False)
    data_hash, tokenizer = data_digest(out / "data"), out / "tokenizer"
    digest = inputs_digest(data_hash, tokenizer) if data_hash and (tokenizer / "tokenizer.json").is_file() else None
    runs = plan_runs(designed, budget, teacher_spec(task, out), out, digest or "not made yet").ordered()
    done = sum(run.done for run in runs) if digest else 0
    console.print(f"{len(runs)} training runs, {done} done: "
                  + ", ".join(f"{r.arm} {r.stage} s{r.seed}{' (done)' if digest and r.done else ''}" for r in runs), markup=False)
