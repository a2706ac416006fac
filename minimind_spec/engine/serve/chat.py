"""`minimind-spec chat`: a conversation in the terminal, through the same scheduler and prompt
rendering as the server (`model.chat_prompt`), so a chat and a server request with the same
messages feed the model the same ids.

Each answer streams as it is generated, reasoning dimmed above the answer (`--no-think` keeps
the thinking switch off, as the server's default), then its length and tokens/s. The history
keeps the last `history` exchanges. Commands: `/reset` forgets the conversation, `/system TEXT`
sets the system message, `/exit` (or end of input) leaves. A line ending in a backslash
continues on the next line, and a line of three double quotes opens and closes a block of lines.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from .model import ServedModel, chat_prompt
from .scheduler import Event, FailEvent, FinishEvent, Request, Sampling, Scheduler, TokenEvent
from .text import ReasoningSplit

HELP = "/reset forgets the conversation, /system TEXT sets the system message, /exit leaves; end a line with \\ to go on"


@dataclass
class ChatSession:
    """The conversation so far: the system message and the exchanges the window keeps."""

    history: int
    system: str | None = None
    exchanges: list[tuple[str, str]] = field(default_factory=list)

    def messages(self, user: str) -> list[dict[str, Any]]:
        kept = self.exchanges[-self.history:] if self.history > 0 else []
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.system}] if self.system else []
        for question, answer in kept:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return messages + [{"role": "user", "content": user}]


def read_message(read: Callable[[str], str]) -> str | None:
    """One user message from `read` (input-like; EOFError ends), joining continued lines and blocks."""
    try:
        line = read("you> ")
    except EOFError:
        return None
    if line.strip() == '"""':
        lines = []
        while True:
            try:
                line = read("... ")
            except EOFError:
                break
            if line.strip() == '"""':
                break
            lines.append(line)
        return "\n".join(lines)
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        try:
            line = read("... ")
        except EOFError:
            break
    lines.append(line)
    return "\n".join(lines)


def answer(served: ServedModel, scheduler: Scheduler, messages: list[dict[str, Any]], console: Console, *,
           thinking: bool, max_tokens: int, temperature: float, top_p: float) -> str:
    """Stream one answer to the console; returns its content (reasoning left out, as the history keeps it)."""
    prompt = chat_prompt(served.tokenizer, messages, thinking=thinking)
    events: queue.Queue[Event] = queue.Queue()
    room = scheduler.max_length - 1 - len(prompt)
    if room <= 0:
        console.print(f"[red]the conversation is {len(prompt)} tokens; the context is {scheduler.max_length}: /reset[/red]")
        return ""
    request = Request(prompt, Sampling(max_tokens=min(max_tokens, room), temperature=temperature, top_p=top_p), events.put)
    split = ReasoningSplit(thinking)
    started = time.perf_counter()
    scheduler.submit(request)
    content: list[str] = []
    reasoning_open = False
    try:
        while True:
            try:
                event = events.get_nowait()
            except queue.Empty:
                if scheduler.thread is None:  # no loop thread: drive it here (the model stays on this thread)
                    scheduler.pump()
                    continue
                event = events.get()
            if isinstance(event, FailEvent):
                console.print(f"\n[red]{event.message}[/red]")
                return ""
            final = isinstance(event, FinishEvent)
            reasoning, text = split.push(event.text if isinstance(event, (TokenEvent, FinishEvent)) else "", final)
            if reasoning:
                reasoning_open = True
                console.print(reasoning, end="", style="dim", markup=False, highlight=False)
            if text:
                if reasoning_open:
                    console.print()
                    reasoning_open = False
                console.print(text, end="", markup=False, highlight=False)
                content.append(text)
            if isinstance(event, FinishEvent):
                seconds = time.perf_counter() - started
                note = " (cut at the token limit)" if event.reason == "length" else ""
                console.print(f"\n[dim]{event.completion_tokens} tokens, {event.completion_tokens / seconds:.1f} tokens/s{note}[/dim]")
                return "".join(content)
    except KeyboardInterrupt:
        scheduler.cancel(request)
        console.print("\n[dim](stopped)[/dim]")
        return "".join(content)


def chat_loop(served: ServedModel, scheduler: Scheduler, console: Console, read: Callable[[str], str], *, history: int,
              thinking: bool, max_tokens: int, temperature: float, top_p: float, system: str | None = None) -> None:
    """Talk until /exit or the end of input."""
    session = ChatSession(history, system)
    console.print(f"[bold]{served.name}[/bold] · {HELP}")
    while True:
        message = read_message(read)
        if message is None:
            console.print()
            return
        command = message.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            session.exchanges.clear()
            console.print("[dim](conversation forgotten)[/dim]")
            continue
        if command.startswith("/system"):
            session.system = command[len("/system"):].strip() or None
            console.print(f"[dim](system: {session.system or 'none'})[/dim]")
            continue
        if command.startswith("/"):
            console.print(f"[dim]unknown command {command.split()[0]}; {HELP}[/dim]")
            continue
        reply = answer(served, scheduler, session.messages(message), console, thinking=thinking, max_tokens=max_tokens,
                       temperature=temperature, top_p=top_p)
        session.exchanges.append((message, reply))
