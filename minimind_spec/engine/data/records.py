"""Typed records of MiniMind's JSONL data formats and the reader that produces them.

- pretrain: `{"text": "..."}`
- SFT / distillation: `{"conversations": [{"role": "system"|"user"|"assistant", "content": "...",
  "reasoning_content": "..."?}, ...]}`
- preference pairs: `{"chosen": ..., "rejected": ...}`, each a plain string (the card's
  `pair_format`) or a conversation list.

Dicts stop here: `read_records` yields typed records with their line numbers. A malformed line
is a `DataError` naming file and line; with `skip_bad_lines` it is counted and skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...errors import InputError
from ...stages import RecordKind

Role = Literal["system", "user", "assistant"]
ROLES = ("system", "user", "assistant")


class DataError(InputError):
    """A data file that cannot be used, located by file and line."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        self.path, self.line = path, line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


@dataclass(frozen=True)
class Turn:
    role: Role
    content: str
    reasoning: str | None = None  # an assistant's reasoning_content, rendered in a <think> block


@dataclass(frozen=True)
class Conversation:
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Document:
    text: str


@dataclass(frozen=True)
class PreferencePair:
    chosen: str | Conversation
    rejected: str | Conversation


Record = Document | Conversation | PreferencePair


@dataclass
class ReadStats:
    """What a pass over a file saw, for the run's summary."""

    records: int = 0
    skipped_lines: list[tuple[int, str]] = field(default_factory=list)  # (line, why) of skipped malformed lines
    blank_lines: int = 0


def _conversation(value: Any, where: str) -> Conversation:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise ValueError(f"{where}[{i}] must be an object with role and content")
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}[{i}].role is {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"{where}[{i}].content must be a string")
        reasoning = turn.get("reasoning_content")
        if reasoning is not None and not isinstance(reasoning, str):
            raise ValueError(f"{where}[{i}].reasoning_content must be a string")
        turns.append(Turn(role, content, reasoning or None))
    return Conversation(tuple(turns))


def parse_record(data: Any, kind: RecordKind) -> Record:
    """One JSON value as a typed record of `kind`; ValueError says what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"a record is a JSON object, got {type(data).__name__}")
    if kind == "pretrain":
        if not isinstance(data.get("text"), str):
            raise ValueError('a pretraining record needs a string "text"')
        return Document(data["text"])
    if kind == "conversation":
        if "conversations" not in data:
            raise ValueError('an SFT record needs "conversations"')
        conversation = _conversation(data["conversations"], "conversations")
        if not any(turn.role == "assistant" for turn in conversation.turns):
            raise ValueError("the conversation has no assistant turn: nothing to train on")
        return conversation
    sides: list[str | Conversation] = []
    for key in ("chosen", "rejected"):
        value = data.get(key)
        if isinstance(value, str):
            sides.append(value)
        elif isinstance(value, list):
            sides.append(_conversation(value, key))
        else:
            raise ValueError(f'a preference record needs "{key}" as a string or a conversation list')
    return PreferencePair(*sides)


def read_records(path: str | Path, kind: RecordKind, skip_bad_lines: bool = False,
                 stats: ReadStats | None = None) -> Iterator[tuple[int, Record]]:
    """(line number, record) for every line of a JSONL file, read as a stream (memory does
    not grow with the file). Blank lines are skipped; a malformed line raises DataError, or
    is recorded in `stats` and skipped with `skip_bad_lines`."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    if not path.is_file():
        raise DataError(path, None, "file not found")
    with open(path, encoding="utf-8") as handle:
        line_no = 0
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                stats.blank_lines += 1
                continue
            try:
                record = parse_record(json.loads(line), kind)
            except (json.JSONDecodeError, ValueError) as exc:
                why = f"not JSON: {exc.msg}" if isinstance(exc, json.JSONDecodeError) else str(exc)
                if not skip_bad_lines:
                    raise DataError(path, line_no, why) from None
                stats.skipped_lines.append((line_no, why))
                continue
            stats.records += 1
            yield line_no, record
    if stats.records == 0:
        raise DataError(path, None, "no usable records" + (" (the file is empty)" if line_no == 0 else ""))
