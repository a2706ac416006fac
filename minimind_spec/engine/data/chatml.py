"""ChatML exactly as the tokenizer's chat template writes it, and the token ids and labels of each format.

The text is MiniMind's chat template's, for every record it reads:
- a turn is `<|im_start|>{role}\n{content}<|im_end|>\n`; the first system turn's block also holds
  the conversation's tools (`TOOLS_HEADER`, one schema per line, `TOOLS_FOOTER`);
- an assistant turn's body is `<think>\n{reasoning}\n</think>\n\n{content}`, then each tool call
  as `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>` (after a newline, but for a first
  call after no content), then `<|im_end|>`; without reasoning the think block is empty
  (`<think>\n\n</think>\n\n`) when the tokenizer's `ChatFormat.empty_think` says its template
  writes one (MiniMind's), and absent otherwise (ours);
- consecutive tool results share one `<|im_start|>user` turn, each as `\n<tool_response>\n{content}\n</tool_response>`;
- the generation prompt is `<|im_start|>assistant\n`, then `<think>\n` with thinking on, or the
  empty think block with thinking off when the template writes one.

A conversation is rendered as parts that each know whether they are trained and whether they
are reasoning; the whole text is tokenized once (so the ids are exactly what the template's text
tokenizes to) and each token takes the flags of the part holding the character it starts at.
Labels cover every assistant body (its think block, empty or not, its content, its tool calls)
and its `<|im_end|>`, and nothing else: not the role header, not the newline after `<|im_end|>`,
not system or user turns, the tools block or tool results. The empty think block is trained as
part of the body, as MiniMind trains it in the samples where it keeps it (its SFT loader drops
the block from 80% of them at random; we keep the template's text as it is). The reasoning
flags mark a non-empty `<think>` block, tags included. Pretraining documents are `<|im_start|>` + text + `<|im_end|>` with
every token trained. Labels use IGNORE_INDEX (-100) where nothing is trained, aligned with the
input ids (the loss shifts them).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from .records import Conversation, Turn
from .tokenizer import BOS_TOKEN, EOS_TOKEN, THINK_CLOSE, THINK_OPEN, TOOLS_FOOTER, TOOLS_HEADER, ChatFormat, ChatTokenizer

IGNORE_INDEX = -100
OUR_FORMAT = ChatFormat()  # what our CHAT_TEMPLATE writes: no empty think block


@dataclass(frozen=True)
class Encoded:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE_INDEX where not trained
    reasoning: tuple[bool, ...]  # True on the tokens of a non-empty <think> block (tags included)
    truncated: bool  # the sample was longer than max_length and was cut


@dataclass(frozen=True)
class _Part:
    text: str
    trained: bool = False
    reasoning: bool = False


def _tool_calls(turn: Turn) -> str:
    """The tool calls of an assistant turn as the template writes them after its content."""
    return "".join(("\n" if i or turn.content else "")
                   + f'<tool_call>\n{{"name": "{call.name}", "arguments": {call.arguments}}}\n</tool_call>'
                   for i, call in enumerate(turn.tool_calls))


def _assistant_parts(turn: Turn, chat_format: ChatFormat) -> list[_Part]:
    """The trained parts of an assistant turn: its body and `<|im_end|>` (the reasoning apart, for its flags)."""
    reasoning = (turn.reasoning or "").strip("\n")
    rest = turn.content.lstrip("\n") + _tool_calls(turn) + EOS_TOKEN
    if not reasoning and not chat_format.empty_think:
        return [_Part(rest, trained=True)]
    return [_Part(f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}", trained=True, reasoning=bool(reasoning)),
            _Part(f"\n\n{rest}", trained=True)]


def assistant_body(turn: Turn, chat_format: ChatFormat = OUR_FORMAT) -> str:
    """An assistant turn's body as the template writes it between the role header and `<|im_end|>`."""
    return "".join(part.text for part in _assistant_parts(turn, chat_format)).removesuffix(EOS_TOKEN)


def _parts(conversation: Conversation, chat_format: ChatFormat) -> list[_Part]:
    """The parts whose concatenation is the template's text of `conversation`."""
    turns = conversation.turns
    first_system = turns[0].role == "system"
    parts = []
    if conversation.tools:
        system = f"{turns[0].content}\n\n" if first_system else ""
        schemas = "".join(f"\n{tool.schema}" for tool in conversation.tools)
        parts.append(_Part(f"{BOS_TOKEN}system\n{system}{TOOLS_HEADER}{schemas}{TOOLS_FOOTER}{EOS_TOKEN}\n"))
    elif first_system:
        parts.append(_Part(f"{BOS_TOKEN}system\n{turns[0].content}{EOS_TOKEN}\n"))
    for i, turn in enumerate(turns):
        if turn.role == "user" or (turn.role == "system" and i > 0):
            parts.append(_Part(f"{BOS_TOKEN}{turn.role}\n{turn.content}{EOS_TOKEN}\n"))
        elif turn.role == "tool":  # consecutive results share one user turn
            opens = i == 0 or turns[i - 1].role != "tool"
            closes = i == len(turns) - 1 or turns[i + 1].role != "tool"
            parts.append(_Part((f"{BOS_TOKEN}user" if opens else "") + f"\n<tool_response>\n{turn.content}\n</tool_response>"
                               + (f"{EOS_TOKEN}\n" if closes else "")))
        elif turn.role == "assistant":
            parts += [_Part(f"{BOS_TOKEN}assistant\n"), *_assistant_parts(turn, chat_format), _Part("\n")]
    return parts


def generation_prompt(chat_format: ChatFormat = OUR_FORMAT, thinking: bool = False) -> str:
    """What opens the assistant turn a model is to write: with `thinking`, an open `<think>` block (the template's
    `open_thinking`); without, the empty think block when the template writes one."""
    if thinking:
        return f"{BOS_TOKEN}assistant\n{THINK_OPEN}\n"
    return f"{BOS_TOKEN}assistant\n" + (f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n" if chat_format.empty_think else "")


def render(conversation: Conversation, add_generation_prompt: bool = False, *, chat_format: ChatFormat = OUR_FORMAT,
           thinking: bool = False) -> str:
    """The ChatML text of a conversation: what a chat template writing `chat_format` produces (our CHAT_TEMPLATE
    by default; pass `tokenizer.chat_format` to follow a loaded tokenizer's). `thinking` is the generation
    prompt's `open_thinking` switch."""
    text = "".join(part.text for part in _parts(conversation, chat_format))
    return text + (generation_prompt(chat_format, thinking) if add_generation_prompt else "")


def _finish(ids: list[int], labels: list[int], reasoning: list[bool], max_length: int | None) -> Encoded:
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels, reasoning = ids[:max_length], labels[:max_length], reasoning[:max_length]
    return Encoded(tuple(ids), tuple(labels), tuple(reasoning), truncated)


def encode_conversation(tokenizer: ChatTokenizer, conversation: Conversation, max_length: int | None = None) -> Encoded:
    """Ids, labels and reasoning flags of `conversation` rendered as the tokenizer's chat template writes it."""
    parts = [part for part in _parts(conversation, tokenizer.chat_format) if part.text]
    starts, offset = [], 0  # the character each part starts at
    for part in parts:
        starts.append(offset)
        offset += len(part.text)
    ids, token_starts = tokenizer.encode_with_starts("".join(part.text for part in parts))
    owners = [parts[max(bisect_right(starts, start) - 1, 0)] for start in token_starts]
    labels = [token if part.trained else IGNORE_INDEX for token, part in zip(ids, owners)]
    return _finish(ids, labels, [part.reasoning for part in owners], max_length)


def encode_prompt(tokenizer: ChatTokenizer, conversation: Conversation, max_length: int | None = None) -> Encoded:
    """Ids of a GRPO prompt's turns (no generation prompt, nothing trained); over `max_length`, its last
    `max_length` tokens: a prompt keeps its end, the turn the model answers."""
    ids = tokenizer.encode(render(conversation, chat_format=tokenizer.chat_format))
    truncated = max_length is not None and len(ids) > max_length
    if max_length is not None:
        ids = ids[max(0, len(ids) - max_length):]
    return Encoded(tuple(ids), (IGNORE_INDEX,) * len(ids), (False,) * len(ids), truncated)


def encode_document(tokenizer: ChatTokenizer, text: str, max_length: int | None = None) -> Encoded:
    ids = [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
    return _finish(ids, list(ids), [False] * len(ids), max_length)
