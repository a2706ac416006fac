"""Text in, text out from a trained run: find the model directory in a run, load the model
and the tokenizer saved beside it, and generate. A chat prompt is a user turn and the
generation prompt, as the tokenizer's own chat template writes them (`ChatTokenizer.chat_format`:
MiniMind's template opens the answer with an empty think block unless thinking is on), with
`thinking` as the template's `open_thinking` switch.

The model is found by `model_files.find_model`: a run directory (its newest finished stage), a
stage directory, a checkpoint, or a model directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from .data.chatml import render
from .data.records import Conversation, Turn
from .data.tokenizer import ChatTokenizer, load_tokenizer
from .export import load_model
from ..model_files import find_model


def prompt_ids(tokenizer: ChatTokenizer, prompt: str, *, chat: bool, thinking: bool = False) -> list[int]:
    """The ids generation starts from: a chat prompt as the tokenizer's template writes it (the user turn, then
    the generation prompt, with an open <think> block when `thinking`), or BOS and the plain text."""
    if not chat:
        return [tokenizer.bos_id, *tokenizer.encode(prompt)]
    return tokenizer.encode(render(Conversation((Turn("user", prompt),)), add_generation_prompt=True,
                                   chat_format=tokenizer.chat_format, thinking=thinking))


def generate_text(path: Path, prompt: str, *, chat: bool, tokenizer_dir: Path | None = None, max_new_tokens: int = 64,
                  temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0, device: str = "cpu",
                  thinking: bool = False) -> str:
    files = find_model(path)
    where = tokenizer_dir or files.tokenizer_dir
    if where is None:
        raise InputError(f"{path}: no tokenizer.json beside the model; pass --tokenizer DIR")
    tokenizer = load_tokenizer(where)
    model = load_model(files.config, files.weights, device=device).eval()
    ids = prompt_ids(tokenizer, prompt, chat=chat, thinking=thinking)
    room = model.max_position_embeddings - len(ids)
    if room <= 0:
        raise InputError(f"the prompt is {len(ids)} tokens; the model takes at most {model.max_position_embeddings}")
    generator = torch.Generator(device=device).manual_seed(seed)
    try:
        output = model.generate(torch.tensor([ids], device=device), max_new_tokens=min(max_new_tokens, room),
                                temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=tokenizer.eos_id,
                                pad_token_id=tokenizer.pad_id, generator=generator)
    except ValueError as error:  # an argument out of range, or a tokenizer larger than the model's vocabulary
        raise InputError(str(error)) from None
    new = [t for t in output[0, len(ids):].tolist() if t not in (tokenizer.eos_id, tokenizer.pad_id)]
    return tokenizer.decode(new)
