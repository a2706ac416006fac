"""Typed records of MiniMind's JSONL data formats and the reader that produces them.

- pretrain: `{"text": "..."}`
- SFT / distillation: `{"conversations": [turn, ...]}`, a turn being
  `{"role": "system"|"user"|"assistant"|"tool", "content": "...", ...}` where
  - a system turn may carry `"tools"`: the tool schemas offered (a list, or that list as a JSON string);
  - an assistant turn may carry `"reasoning_content"`, or hold its reasoning inline, as MiniMind's r1
    data does (`"content": "<think>\n...\n</think>\n\nanswer"`), and `"tool_calls"`: a list (or a JSON
    string of one) of `{"name", "arguments"}`, `{"function": {"name", "arguments"}}` or
    `{"type": "function", "function": {...}}`, arguments a JSON string or a JSON value; its content
    may be empty or null when it calls tools;
  - a tool turn holds one tool result in `content`.
  A null field counts as absent (the way Hugging Face `datasets` writes missing keys back out).
- preference pairs: `{"chosen": ..., "rejected": ...}`, each a plain string (the card's
  `pair_format`) or a conversation list.
- GRPO prompts: `{"conversations": [turn, ...], "answer": "..."}`: the turns end with the user turn
  the model answers; the answer (a string, or a number read as its JSON text) is what the rewards check.

Dicts stop here: `read_records` yields typed records with their line numbers, parsed the way
MiniMind's chat template reads the fields (inline reasoning is split off exactly as the template
splits it; tool schemas and object arguments become the JSON text the template writes), so
`chatml` renders the same text from the typed record. Files are read in binary and decoded line
by line: a UTF-8 byte-order mark at the start of the file is dropped, and a line that is not
UTF-8, like any malformed line, is a `DataError` naming file and line (with `skip_bad_lines` it
is counted and skipped).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...errors import InputError
from ...stages import RecordKind

Role = Literal["system", "user", "assistant", "tool"]
ROLES = ("system", "user", "assistant", "tool")
UTF8_BOM = b"\xef\xbb\xbf"


class DataError(InputError):
    """A data file that cannot be used, located by file and line."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        self.path, self.line = path, line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


@dataclass(frozen=True)
class ToolCall:
    """One call an assistant turn makes."""

    name: str
    arguments: str  # JSON text as the chat template writes it: a string as given, any other value as `tojson` writes it


@dataclass(frozen=True)
class Tool:
    """One tool schema a system turn offers (OpenAI style: `{"type": "function", "function": {...}}`)."""

    schema: str  # the schema as the chat template writes it in <tools>: `tojson` (key order kept, non-ASCII as is)


@dataclass(frozen=True)
class Turn:
    role: Role
    content: str  # for an assistant, what follows its inline <think> block when it had one (split off into reasoning)
    reasoning: str | None = None  # an assistant's reasoning, rendered in a <think> block
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's tool calls, rendered after its content


@dataclass(frozen=True)
class Conversation:
    turns: tuple[Turn, ...]
    tools: tuple[Tool, ...] = ()  # offered by a system turn; the chat template writes them in the first system block


@dataclass(frozen=True)
class Document:
    text: str


@dataclass(frozen=True)
class PreferencePair:
    chosen: str | Conversation
    rejected: str | Conversation


@dataclass(frozen=True)
class Prompt:
    """A GRPO prompt: the conversation so far (ending with a user turn) and the reference answer its rewards check."""

    conversation: Conversation
    answer: str


Record = Document | Conversation | PreferencePair | Prompt


@dataclass
class ReadStats:
    """What a pass over a file saw, for the run's summary."""

    records: int = 0
    skipped_lines: list[tuple[int, str]] = field(default_factory=list)  # (line, why) of skipped malformed lines
    blank_lines: int = 0


def tojson(value: Any) -> str:
    """JSON text as transformers' `tojson` filter writes it in chat templates: non-ASCII kept, key order kept,
    `", "` and `": "` separators."""
    return json.dumps(value, ensure_ascii=False)


def split_inline_reasoning(content: str) -> tuple[str, str]:
    """(reasoning, content) of an assistant content holding `<think>...</think>`, split as MiniMind's chat
    template splits it: the reasoning is the text before the first `</think>` and after the last `<think>`
    before it, newlines trimmed; the content is the text after the last `</think>`, leading newlines trimmed."""
    reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning, content.split("</think>")[-1].lstrip("\n")


def _json_list(value: Any, where: str) -> list[Any]:
    """A list given as is or as a JSON string of one (MiniMind writes `tools` and `tool_calls` as strings)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is a string but not JSON: {exc.msg}") from None
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list (or a JSON string of one), got {type(value).__name__}")
    return value


def _tools(value: Any, where: str) -> tuple[Tool, ...]:
    if value in (None, ""):
        return ()
    schemas = _json_list(value, where)
    if not all(isinstance(schema, dict) for schema in schemas):
        raise ValueError(f"{where} must list tool schemas (JSON objects)")
    return tuple(Tool(tojson(schema)) for schema in schemas)


def _tool_calls(value: Any, where: str) -> tuple[ToolCall, ...]:
    if value in (None, ""):
        return ()
    calls = []
    for i, item in enumerate(_json_list(value, where)):
        call = (item.get("function") or item) if isinstance(item, dict) else item  # {"function": {...}} or the call itself
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or "arguments" not in call:
            raise ValueError(f'{where}[{i}] must be {{"name": "...", "arguments": ...}} (or wrapped in "function")')
        arguments = call["arguments"]
        calls.append(ToolCall(call["name"], arguments if isinstance(arguments, str) else tojson(arguments)))
    return tuple(calls)


def _conversation(value: Any, where: str) -> Conversation:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of turns")
    turns = []
    tools: tuple[Tool, ...] = ()
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise ValueError(f"{where}[{i}] must be an object with role and content")
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}[{i}].role is {role!r}; expected one of {', '.join(ROLES)}")
        offered = _tools(turn.get("tools"), f"{where}[{i}].tools")
        if offered and role != "system":
            raise ValueError(f"{where}[{i}] is a {role} turn; only a system turn offers tools")
        if offered and tools:
            raise ValueError(f"{where}[{i}].tools: tools are already offered by an earlier system turn")
        tools = offered or tools
        calls = _tool_calls(turn.get("tool_calls"), f"{where}[{i}].tool_calls")
        if calls and role != "assistant":
            raise ValueError(f"{where}[{i}] is a {role} turn; only an assistant turn makes tool calls")
        if content is None and calls:
            content = ""  # a turn that only calls tools
        if not isinstance(content, str):
            raise ValueError(f"{where}[{i}].content must be a string")
        reasoning = turn.get("reasoning_content")
        if reasoning is not None and not isinstance(reasoning, str):
            raise ValueError(f"{where}[{i}].reasoning_content must be a string")
        if role == "assistant" and reasoning is None and "</think>" in content:  # reasoning inline, as the template reads it
            reasoning, content = split_inline_reasoning(content)
        turns.append(Turn(role, content, reasoning or None, calls))
    return Conversation(tuple(turns), tools)


def _message_text(content: Any, where: str) -> Any:
    """An OpenAI message's content: a string as is, a list of parts as the text of its text parts."""
    if isinstance(content, list):
        if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                   for part in content):
            raise ValueError(f"{where}: only text parts ({{\"type\": \"text\", \"text\": ...}}) can be read")
        return "".join(part["text"] for part in content)
    return content


def parse_messages(messages: Any, tools: Any = None) -> Conversation:
    """OpenAI-style chat messages (system/user/assistant/tool; content a string or text parts; assistant
    `tool_calls`) and the request's `tools`, as the typed conversation the chat template renders.
    ValueError says what is wrong, naming the message."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    turns = [{**m, "content": _message_text(m.get("content"), f"messages[{i}].content")} if isinstance(m, dict) else m
             for i, m in enumerate(messages)]
    conversation = _conversation(turns, "messages")
    offered = _tools(tools, "tools")
    if offered and conversation.tools:
        raise ValueError("tools are given both in the request and on a system message")
    return Conversation(conversation.turns, offered or conversation.tools)


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
    if kind == "prompt":
        return _prompt(data)
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


def _prompt(data: dict[str, Any]) -> Prompt:
    if "conversations" not in data:
        raise ValueError('a prompt record needs "conversations" (the turns the model answers)')
    conversation = _conversation(data["conversations"], "conversations")
    last = conversation.turns[-1].role
    if last not in ("user", "tool"):
        raise ValueError(f"the conversation ends with a {last} turn; a prompt ends with the user turn the model answers")
    answer = data.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError('a prompt record needs "answer" as a string or a number (the reference the rewards check)')
    return Prompt(conversation, answer if isinstance(answer, str) else json.dumps(answer))


def decode_line(raw: bytes, line_no: int) -> str:
    """One line of a data file as text; line 1 loses a UTF-8 byte-order mark. ValueError names the first byte
    that is not UTF-8 and its column: 1-based, counted in bytes from the start of the line as it is in the file
    (a byte-order mark included), which is what a hex editor or `cut -b` shows."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None
    return text[1:] if line_no == 1 and raw.startswith(UTF8_BOM) else text


def json_line(raw: bytes, line_no: int) -> Any:
    """The JSON value on one raw line of a JSONL file, None for a blank line; ValueError says what is wrong."""
    text = decode_line(raw, line_no)
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    except RecursionError:
        raise ValueError("not JSON: nested too deeply to read") from None
    if data is None:  # None means a blank line to callers: a `null` line is an error of its own
        raise ValueError("a record is a JSON object, got null")
    return data


def parse_line(raw: bytes, line_no: int, kind: RecordKind) -> Record | None:
    """The record on one raw line of a JSONL file, None for a blank line; ValueError says what is wrong."""
    data = json_line(raw, line_no)
    return None if data is None else parse_record(data, kind)


def read_records(path: str | Path, kind: RecordKind, skip_bad_lines: bool = False,
                 stats: ReadStats | None = None) -> Iterator[tuple[int, Record]]:
    """(line number, record) for every line of a JSONL file, read as a stream (memory does
    not grow with the file). Blank lines are skipped; a malformed line (not UTF-8, not JSON, not
    a record of `kind`) raises DataError, or is recorded in `stats` and skipped with `skip_bad_lines`."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    if not path.is_file():
        raise DataError(path, None, "file not found")
    with open(path, "rb") as handle:
        line_no = 0
        for line_no, raw in enumerate(handle, 1):
            try:
                record = parse_line(raw, line_no, kind)
            except ValueError as exc:
                if not skip_bad_lines:
                    raise DataError(path, line_no, str(exc)) from None
                stats.skipped_lines.append((line_no, str(exc)))
                continue
            if record is None:
                stats.blank_lines += 1
                continue
            stats.records += 1
            yield line_no, record
    if stats.records == 0:
        raise DataError(path, None, "no usable records" + (" (the file is empty)" if line_no == 0 else ""))
