"""The model a server or a terminal chat talks with, and the one way a conversation becomes a prompt.

`load_served` finds the model as `generate` does (a run, a stage, a checkpoint, a model
directory, or a MiniMind `.pth` with its spec), loads it in the requested dtype and reads the
tokenizer beside it. `chat_prompt` renders OpenAI-style messages (and the request's tools)
with the tokenizer's own chat template (`engine.data.chatml.render`), with the thinking switch:
the server and `chat` call it alike, so the same messages give the same token ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from builders.model import MiniMindForCausalLM

from ..data.chatml import render
from ..data.records import parse_messages
from ..data.tokenizer import ChatTokenizer, load_tokenizer
from ..export import load_model
from ...errors import InputError
from ...model_files import ModelFiles

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ServedModel:
    name: str  # the model id clients send (`/v1/models`)
    model: MiniMindForCausalLM
    tokenizer: ChatTokenizer

    @property
    def stop_ids(self) -> set[int]:
        """Tokens that end an answer: the tokenizer's EOS (`<|im_end|>`) and its end-of-text."""
        return {self.tokenizer.eos_id, self.tokenizer.pad_id}

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def load_served(files: ModelFiles, name: str, tokenizer_dir: Path | None = None, device: str = "cpu",
                dtype: str = "float32") -> ServedModel:
    """The model in `files` on `device` in `dtype`, in eval mode, with its tokenizer."""
    where = tokenizer_dir or files.tokenizer_dir
    if where is None:
        raise InputError(f"{files.config.parent}: no tokenizer.json beside the model; pass --tokenizer DIR")
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r}: one of {', '.join(DTYPES)}")
    tokenizer = load_tokenizer(where)
    model = load_model(files.config, files.weights, device=device).to(DTYPES[dtype]).eval()
    if tokenizer.vocab_size > model.vocab_size:
        raise InputError(f"the tokenizer has {tokenizer.vocab_size:,} ids but the model's vocab is {model.vocab_size:,}")
    return ServedModel(name, model, tokenizer)


def chat_prompt(tokenizer: ChatTokenizer, messages: list[dict[str, Any]], tools: list[Any] | None = None,
                thinking: bool = False) -> list[int]:
    """The prompt ids of a chat: the messages as the tokenizer's chat template writes them, then the
    generation prompt (an open think block with `thinking`). ValueError names a malformed message."""
    conversation = parse_messages(messages, tools)
    return tokenizer.encode(render(conversation, add_generation_prompt=True, chat_format=tokenizer.chat_format,
                                   thinking=thinking))
