"""The study's training runs: one `minimind-spec train` process per stage of each arm and seed.

A `StageRun` is keyed by what decides its result: the spec file's bytes (every spec the study
trains is written with `extends` merged, so a change anywhere reaches the key), the variant, the
stage, the seed, the steps, the data, and the keys of the runs it starts from (the previous
stage, the teacher). Its directory carries the key, so a finished run is never trained twice
and a changed spec or budget trains afresh; an interrupted run resumes from its last
checkpoint (`train --resume`). Runs execute in dependency order, `jobs` at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

from ..errors import InputError
from ..metrics import METRICS_FILE, read_metrics
from ..stages import STAGE_ORDER, stage
from .design import Ablation, spec_digest
from .task import Budget, Task

DATA_FILES_BY_RECORDS = {"pretrain": "pretrain.jsonl", "conversation": "sft.jsonl", "preference": "pairs.jsonl"}
DONE_FILE = "done.json"
ENGINE = 2  # in every run's key: runs trained by an earlier engine (2: isolated packing, per-stage settings) train afresh
STAMP_FILE = "made_by.json"  # in OUT/data: the task command that made the data
DATA_FILES = ("pretrain.jsonl", "sft.jsonl", "pairs.jsonl", "eval.jsonl", "eval_pairs.jsonl", "heldout_text.jsonl")


@dataclass(frozen=True, eq=False)
class StageRun:
    arm: str  # "base", "base@MoE", "teacher" or an ablation's name
    spec: Path
    variant: str | None
    stage: str
    seed: int
    steps: int
    data_digest: str
    init: "StageRun | None" = None
    teacher: "StageRun | None" = None
    root: Path = field(default=Path("."), compare=False)

    @cached_property
    def key(self) -> str:
        parts = {"engine": ENGINE, "spec": spec_digest(self.spec), "variant": self.variant, "stage": self.stage, "seed": self.seed,
                 "steps": self.steps, "data": self.data_digest, "init": self.init.key if self.init else None,
                 "teacher": self.teacher.key if self.teacher else None}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def directory(self) -> Path:
        return self.root / "runs" / f"{self.arm}.{self.stage}.seed{self.seed}.{self.key}"

    @property
    def log(self) -> Path:
        """The output of its `train` process, beside its run directory (which holds only what `train` writes)."""
        return self.directory.with_name(self.directory.name + ".log")

    @property
    def final(self) -> Path:
        return self.directory / self.stage / "final"

    @property
    def metrics(self) -> Path:
        return self.directory / self.stage / METRICS_FILE

    @property
    def done(self) -> bool:
        return (self.directory / DONE_FILE).is_file()

    @property
    def label(self) -> str:
        return f"{self.arm} {self.stage} (seed {self.seed}, {self.steps} steps)"


@dataclass
class StudyRuns:
    """Every run of the study, by (arm, stage, seed)."""

    runs: dict[tuple[str, str, int], StageRun]

    def get(self, arm: str, stage: str, seed: int) -> StageRun:
        return self.runs[(arm, stage, seed)]

    def ordered(self) -> list[StageRun]:
        """Dependencies first."""
        seen: dict[int, StageRun] = {}

        def visit(run: StageRun) -> None:
            for before in (run.init, run.teacher):
                if before is not None:
                    visit(before)
            seen.setdefault(id(run), run)

        for run in self.runs.values():
            visit(run)
        return list(seen.values())


def make_data(task: Task, out: Path) -> tuple[Path, str]:
    """The task's data in OUT/data (made once) and a digest of its files."""
    data = out / "data"
    stamp = json.dumps({"command": list(task.data_command), "task": str(task.directory)})
    made_by = (data / STAMP_FILE).read_text() if (data / STAMP_FILE).is_file() else stamp  # unstamped: an earlier version's
    if data_digest(data) is None or made_by != stamp:
        shutil.rmtree(data, ignore_errors=True)  # made by other task settings: made again
        script, *arguments = task.data_command
        done = subprocess.run([sys.executable, str(task.directory / script), str(data), "--seed", "0", *arguments],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.splitlines()[-10:])
            raise InputError(f"the task's data script {task.directory / script} failed (exit {done.returncode}):\n{tail}")
    (data / STAMP_FILE).write_text(stamp)
    digest = data_digest(data)
    if digest is None:
        missing = [name for name in DATA_FILES if not (data / name).is_file()]
        raise InputError(f"the task's data script did not write {', '.join(missing)} into {data}")
    return data, digest


def data_digest(data: Path) -> str | None:
    """A digest of the task's data files (None before they are made)."""
    if not all((data / name).is_file() for name in DATA_FILES):
        return None
    digest = hashlib.sha256()
    for name in DATA_FILES:
        digest.update((data / name).read_bytes())
    return digest.hexdigest()[:16]


def inputs_digest(data_hash: str, tokenizer: Path) -> str:
    """What every run trains on: the data and the tokenizer."""
    return hashlib.sha256((data_hash + hashlib.sha256((tokenizer / "tokenizer.json").read_bytes()).hexdigest()).encode()
                          ).hexdigest()[:16]


def base_arm(ablation: Ablation) -> str:
    """The arm an ablation is compared with: the base, built as the ablation's variant if it picks one."""
    return f"base@{ablation.variant}" if ablation.variant else "base"


def plan_runs(ablations: list[Ablation], budget: Budget, teacher_spec: Path, out: Path, data_digest: str) -> StudyRuns:
    """The runs of the study: the teacher (once, with the first seed), then per seed each base
    arm through the stages its ablations measure or start from, and each ablation's own stages,
    starting from the base's weights where it diverges."""
    runs: dict[tuple[str, str, int], StageRun] = {}
    teacher = None
    if any("distill" in STAGE_ORDER[:STAGE_ORDER.index(a.measured_after) + 1] for a in ablations):
        first = budget.seeds[0]
        for stage in ("pretrain", "sft"):
            teacher = StageRun("teacher", teacher_spec, None, stage, first, budget.teacher_steps[stage], data_digest,
                               init=teacher, root=out)
            runs[("teacher", stage, first)] = teacher

    def steps(stage: str) -> int:
        if stage not in budget.steps:
            raise InputError(f"the budget {budget.name!r} gives no steps for the {stage} stage")
        return budget.steps[stage]

    for seed in budget.seeds:
        bases: dict[str, tuple[Ablation, int]] = {}
        for ablation in ablations:  # how far each base arm must train
            last = max(STAGE_ORDER.index(ablation.measured_after), STAGE_ORDER.index(ablation.first_stage) - 1)
            arm = base_arm(ablation)
            bases[arm] = (ablation, max(last, bases[arm][1]) if arm in bases else last)
        for arm, (ablation, last) in bases.items():
            previous = None
            for kind in STAGE_ORDER[:last + 1]:
                previous = StageRun(arm, ablation.base_spec, ablation.variant, kind, seed, steps(kind), data_digest,
                                    init=previous, teacher=teacher if kind == "distill" else None, root=out)
                runs[(arm, kind, seed)] = previous
        for ablation in ablations:
            start = STAGE_ORDER.index(ablation.stages[0])
            previous = runs[(base_arm(ablation), STAGE_ORDER[start - 1], seed)] if start > 0 else None
            for stage in ablation.stages:
                previous = StageRun(ablation.name, ablation.spec, ablation.variant, stage, seed, steps(stage), data_digest,
                                    init=previous, teacher=teacher if stage == "distill" else None, root=out)
                runs[(ablation.name, stage, seed)] = previous
    return StudyRuns(runs)


def finished(run: StageRun) -> bool:
    """The stage wrote its final model after its last step (an interrupted run exits 0 without one)."""
    if not (run.final / "model.safetensors").is_file():
        return False
    rows = read_metrics(run.metrics)
    return bool(rows) and rows[-1].step == run.steps


def train_command(run: StageRun, data: Path, tokenizer: Path, device: str) -> list[str]:
    definition = stage(run.stage)
    flag, file = definition.data_flag, DATA_FILES_BY_RECORDS[definition.records]
    every = str(max(10, run.steps // 4))
    command = [sys.executable, "-m", "minimind_spec", "train", str(run.spec), "--stage", run.stage, flag, str(data / file),
               "--tokenizer", str(tokenizer), "--out", str(run.directory), "--seed", str(run.seed), "--max-steps",
               str(run.steps), "--eval-every", every, "--save-every", every, "--no-progress", "--device", device]
    if run.variant:
        command += ["--variant", run.variant]
    if run.init is not None:
        command += ["--init", str(run.init.final)]
    if run.teacher is not None:
        command += ["--teacher", str(run.teacher.final)]
    if (run.directory / run.stage).is_dir():
        command.append("--resume")
    return command


def execute(study: StudyRuns, data: Path, tokenizer: Path, device: str, jobs: int,
            report: Callable[[StageRun, str], None]) -> None:
    """Train every run not done yet, dependencies first, `jobs` processes at a time; `report`
    hears each run's start and end. Raises InputError with the log's tail when a run fails."""
    order = study.ordered()
    futures: dict[int, Future] = {}
    lock = threading.Lock()
    env = dict(os.environ)
    if jobs > 1:  # share the cores between the processes
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))

    stopping = threading.Event()

    def train(run: StageRun) -> None:
        for before in (run.init, run.teacher):
            if before is not None:
                futures[id(before)].result()  # re-raises a dependency's failure
        if stopping.is_set():
            return
        if run.done:
            with lock:
                report(run, "done before")
            return
        command = train_command(run, data, tokenizer, device)
        with lock:
            report(run, "training" if "--resume" not in command else "resuming")
        run.log.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        log = run.log
        with log.open("a") as stream:
            code = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=env).returncode
        if code != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise InputError(f"{run.label} failed (exit {code}); its log {log} ends:\n{tail}")
        if stopping.is_set() or not finished(run):  # interrupted: it saved a checkpoint, the next invocation resumes it
            with lock:
                report(run, "interrupted (resumes next time)")
            return
        seconds = time.perf_counter() - started
        (run.directory / DONE_FILE).write_text(json.dumps({"seconds": seconds, "command": command[2:]}, indent=2) + "\n")
        with lock:
            report(run, f"trained in {seconds:.0f} s")

    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        for run in order:  # submitted in dependency order: a waiting run only waits on runs already started
            futures[id(run)] = pool.submit(train, run)
        for run in order:
            futures[id(run)].result()
    except BaseException:  # Ctrl-C or a failed run: start nothing more (a run in flight saves its checkpoint)
        stopping.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


def train_seconds(run: StageRun) -> float | None:
    done = run.directory / DONE_FILE
    return float(json.loads(done.read_text())["seconds"]) if done.is_file() else None
