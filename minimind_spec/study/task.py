"""A study task: the directory `--task` names, described by its `task.json`.

A task says how to make its data (a script run as `python SCRIPT OUT_DIR --seed S ...`), the
tokenizer's size, the teacher spec for distillation, the `scale` patch (JSON Merge Patch) that
shrinks every spec of the study to dimensions the machine can train, and two budgets: `quick`
and `full`, each with its training seeds and optimizer steps per stage. The JSON stops here:
the rest of the study sees a `Task`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError
from ..stages import STAGE_ORDER

TASK_FILE = "task.json"


class _Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seeds: list[int] = Field(min_length=1)
    steps: dict[str, int]
    teacher_steps: dict[str, int]


class _TaskFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    about: str
    data: list[str] = Field(min_length=1)
    tokenizer_vocab: int = Field(gt=0)
    teacher: str
    scale: dict[str, Any]
    budgets: dict[str, _Budget]


@dataclass(frozen=True)
class Budget:
    """Seeds and optimizer steps per stage (the student's, and the teacher's)."""

    name: str
    seeds: tuple[int, ...]
    steps: dict[str, int]
    teacher_steps: dict[str, int]


@dataclass(frozen=True)
class Task:
    """A checked task.json. The held-out data its script writes must include the text domains
    "story" and "general" in heldout_text.jsonl, problems in eval.jsonl and pairs in eval_pairs.jsonl."""

    directory: Path
    about: str
    data_command: tuple[str, ...]  # the script (relative to the task) and its arguments
    tokenizer_vocab: int
    teacher_spec: Path
    scale: dict[str, Any]  # JSON Merge Patch applied to every student spec of the study
    budgets: dict[str, Budget]

    def budget(self, name: str) -> Budget:
        if name not in self.budgets:
            raise InputError(f"{self.directory / TASK_FILE} has no {name!r} budget (it has {', '.join(self.budgets)})")
        return self.budgets[name]


def load_task(directory: Path) -> Task:
    """Read and check `directory/task.json`; raises InputError naming every problem."""
    path = Path(directory) / TASK_FILE
    if not path.is_file():
        raise InputError(f"{directory} is not a study task: it has no {TASK_FILE} (try --task examples/reasoning)")
    try:
        raw = _TaskFile.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"/{'/'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(f"{path}: {problems}") from None
    directory = path.parent.resolve()
    budgets = {}
    for name, budget in raw.budgets.items():
        unknown = sorted(set(budget.steps) - set(STAGE_ORDER)) + sorted(set(budget.teacher_steps) - {"pretrain", "sft"})
        if unknown or any(n < 1 for n in (*budget.steps.values(), *budget.teacher_steps.values())):
            raise InputError(f"{path}: /budgets/{name}: steps per stage are positive counts for "
                             f"{', '.join(STAGE_ORDER)} (teacher: pretrain, sft); got {unknown or 'a count below 1'}")
        budgets[name] = Budget(name, tuple(budget.seeds), dict(budget.steps), dict(budget.teacher_steps))
    teacher = directory / raw.teacher
    if not teacher.is_file():
        raise InputError(f"{path}: /teacher: {teacher} not found")
    if not (directory / raw.data[0]).is_file():
        raise InputError(f"{path}: /data: the data script {directory / raw.data[0]} not found")
    return Task(directory, raw.about, tuple(raw.data), raw.tokenizer_vocab, teacher, raw.scale, budgets)
