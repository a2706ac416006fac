"""ChatML exactly as MiniMind writes it, and the token ids and labels of each format.

A turn is `<|im_start|>{role}\n{content}<|im_end|>\n`; an assistant turn with reasoning has
the body `<think>\n{reasoning}\n</think>\n\n{content}`. A conversation is encoded piece by
piece (role header, body, closing tag), so the trained span is exact at the token level:
labels cover every assistant body and its `<|im_end|>`, and nothing else (not the role
header, not the newline after `<|im_end|>`, not system or user turns). Pretraining documents
are `<|im_start|>` + text + `<|im_end|>` with every token trained. Labels use IGNORE_INDEX
(-100) where nothing is trained, aligned with the input ids (the loss shifts them).
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import Conversation, Turn
from .tokenizer import BOS_TOKEN, EOS_TOKEN, THINK_CLOSE, THINK_OPEN, ChatTokenizer

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]  # IGNORE_INDEX where not trained
    reasoning: tuple[bool, ...]  # True on the tokens of a <think> block (tags included)
    truncated: bool  # the sample was longer than max_length and was cut


def assistant_body(turn: Turn) -> str:
    if turn.reasoning:
        return f"{THINK_OPEN}\n{turn.reasoning}\n{THINK_CLOSE}\n\n{turn.content}"
    return turn.content


def render(conversation: Conversation, add_generation_prompt: bool = False) -> str:
    """The ChatML text of a conversation (what the chat template produces)."""
    text = "".join(f"{BOS_TOKEN}{turn.role}\n{assistant_body(turn) if turn.role == 'assistant' else turn.content}{EOS_TOKEN}\n"
                   for turn in conversation.turns)
    return text + (f"{BOS_TOKEN}assistant\n" if add_generation_prompt else "")


def _pieces(conversation: Conversation) -> list[tuple[str, bool, bool]]:
    """(text, trained, is reasoning) pieces whose concatenation is `render(conversation)`."""
    pieces = []
    for turn in conversation.turns:
        pieces.append((f"{BOS_TOKEN}{turn.role}\n", False, False))
        if turn.role != "assistant":
            pieces.append((f"{turn.content}{EOS_TOKEN}\n", False, False))
            continue
        if turn.reasoning:
            pieces.append((f"{THINK_OPEN}\n{turn.reasoning}\n{THINK_CLOSE}", True, True))
            pieces.append((f"\n\n{turn.content}{EOS_TOKEN}", True, False))
        else:
            pieces.append((f"{turn.content}{EOS_TOKEN}", True, False))
        pieces.append(("\n", False, False))
    return pieces


def _finish(ids: list[int], labels: list[int], reasoning: list[bool], max_length: int | None) -> Encoded:
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels, reasoning = ids[:max_length], labels[:max_length], reasoning[:max_length]
    return Encoded(tuple(ids), tuple(labels), tuple(reasoning), truncated)


def encode_conversation(tokenizer: ChatTokenizer, conversation: Conversation, max_length: int | None = None) -> Encoded:
    ids: list[int] = []
    labels: list[int] = []
    reasoning: list[bool] = []
    for text, trained, is_reasoning in _pieces(conversation):
        piece = tokenizer.encode(text)
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
        reasoning += [is_reasoning] * len(piece)
    return _finish(ids, labels, reasoning, max_length)


def encode_document(tokenizer: ChatTokenizer, text: str, max_length: int | None = None) -> Encoded:
    ids = [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
    return _finish(ids, list(ids), [False] * len(ids), max_length)
