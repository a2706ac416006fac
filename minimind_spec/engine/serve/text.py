"""Generated tokens to the text a client sees: stop strings, reasoning and tool calls.

- `TextStream` turns a request's tokens into text deltas. The whole continuation is decoded
  again after each token (so multi-token characters come out whole), and text that could still
  become a stop string, or an incomplete UTF-8 character, is held back until it cannot: a stop
  string is honoured across token boundaries and never sent.
- `ReasoningSplit` divides the text at `</think>` into `reasoning_content` and `content`, as
  MiniMind's server and vLLM's reasoning parsers do: text is reasoning when the prompt opened a
  think block (thinking on) or the model opens one itself; the newlines just inside the tags and
  after `</think>` are the template's and belong to neither (as MiniMind's template splits them).
- `parse_tool_calls` finds MiniMind's `<tool_call>{"name": ..., "arguments": ...}</tool_call>`
  blocks in a finished answer and returns them in OpenAI's shape, with the text around them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` could begin a stop string (or are an incomplete character)."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    trailing = len(text) - len(text.rstrip("\ufffd"))  # bytes of a character still to come decode as U+FFFD
    return max(hold, trailing)


class TextStream:
    """A request's continuation as text, delivered in safe pieces."""

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str] = ()) -> None:
        self.decode = decode
        self.stops = tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.sent = 0  # characters already delivered
        self.text = ""

    def push(self, token: int) -> tuple[str, bool]:
        """(new text to send, whether a stop string ended the answer) after one more token."""
        self.ids.append(token)
        self.text = self.decode(self.ids)
        found = [i for i in (self.text.find(stop) for stop in self.stops) if i >= 0]
        if found:
            end = min(found)
            self.text = self.text[:end]
            delta, self.sent = self.text[self.sent:end], max(self.sent, end)
            return delta, True
        end = len(self.text) - _held_back(self.text, self.stops)
        if end <= self.sent:
            return "", False
        delta, self.sent = self.text[self.sent:end], end
        return delta, False

    def flush(self) -> str:
        """What is still held back, when the answer ends for another reason (EOS, length)."""
        delta, self.sent = self.text[self.sent:].rstrip("\ufffd"), len(self.text)
        return delta


class ReasoningSplit:
    """Splits streamed text into (reasoning, content) deltas at `</think>`."""

    def __init__(self, thinking: bool) -> None:
        self.state = "reasoning" if thinking else "start"  # start: no text yet; the model may open <think> itself
        self.pending = ""
        self.started = False  # reasoning text other than newlines has been seen

    def push(self, delta: str, final: bool = False) -> tuple[str, str]:
        text = self.pending + delta
        self.pending = ""
        reasoning = content = ""
        if self.state == "start":
            stripped = text.lstrip()
            if not final and THINK_OPEN.startswith(stripped) and len(stripped) < len(THINK_OPEN):
                self.pending = text  # could still be "<think>"
                return "", ""
            if stripped.startswith(THINK_OPEN):
                text, self.state = stripped[len(THINK_OPEN):].lstrip("\n"), "reasoning"
            else:
                self.state = "content"
        if self.state == "reasoning":  # newlines just inside the tags are the template's: `<think>\n...\n</think>`
            if not self.started:  # a model that opens the block again (thinking on) writes a second tag: dropped
                text = text.lstrip("\n")
                while text.startswith(THINK_OPEN):
                    text = text[len(THINK_OPEN):].lstrip("\n")
                if not final and text and THINK_OPEN.startswith(text):
                    self.pending = text
                    return "", ""
                self.started = bool(text)
            if THINK_CLOSE in text:
                reasoning, text = text.split(THINK_CLOSE, 1)
                self.state, reasoning = "after", reasoning.rstrip("\n")
            else:
                hold = 0
                if not final:  # a possible start of </think>, and the newlines before it (they may be the template's)
                    hold = _held_back(text, (THINK_CLOSE,))
                    body = text[:len(text) - hold]
                    hold += len(body) - len(body.rstrip("\n"))
                reasoning, self.pending = text[:len(text) - hold], text[len(text) - hold:]
                return reasoning, ""
        if self.state == "after":  # the newlines that follow </think> belong to neither
            text = text.lstrip("\n")
            if not text and not final:
                return reasoning, ""
            self.state = "content"
        return reasoning, content + text


@dataclass(frozen=True)
class ToolCallOut:
    id: str
    name: str
    arguments: str  # JSON text


def parse_tool_calls(text: str) -> tuple[str, list[ToolCallOut]]:
    """(the text outside the calls, the calls) of an answer; a block that is not `{"name", "arguments"}` JSON stays text."""
    calls: list[ToolCallOut] = []
    kept: list[str] = []
    rest = text
    while TOOL_OPEN in rest:
        before, after = rest.split(TOOL_OPEN, 1)
        if TOOL_CLOSE not in after:
            break
        body, rest = after.split(TOOL_CLOSE, 1)
        try:
            call = json.loads(body.strip())
        except json.JSONDecodeError:
            call = None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            kept.append(before + TOOL_OPEN + body + TOOL_CLOSE)
            continue
        arguments = call.get("arguments", {})
        kept.append(before)
        calls.append(ToolCallOut(f"call_{uuid.uuid4().hex[:24]}", call["name"],
                                 arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)))
    kept.append(rest)
    return "".join(kept).strip(), calls


class ToolCallSplit:
    """Streams content until a `<tool_call>` begins, then keeps the rest for `parse_tool_calls` at the end."""

    def __init__(self) -> None:
        self.pending = ""
        self.calling = False
        self.kept = ""

    def push(self, delta: str) -> str:
        """The content that can be sent now."""
        if self.calling:
            self.kept += delta
            return ""
        text = self.pending + delta
        if TOOL_OPEN in text:
            before, after = text.split(TOOL_OPEN, 1)
            self.calling, self.kept, self.pending = True, TOOL_OPEN + after, ""
            return before
        hold = _held_back(text, (TOOL_OPEN,))
        self.pending = text[len(text) - hold:]
        return text[:len(text) - hold]

    def finish(self) -> tuple[str, list[ToolCallOut]]:
        """(the content still to send, the calls) once the answer is complete."""
        if not self.calling:
            rest, self.pending = self.pending, ""
            return rest, []
        return parse_tool_calls(self.kept)
