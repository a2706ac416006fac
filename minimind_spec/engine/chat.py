"""Text in, text out from a trained run: find the model directory in a run, load the model
and the tokenizer saved beside it, and generate (with the ChatML template for chat models).

A run directory holds one `<stage>/final/` per finished stage; the latest stage's (dpo,
distill, sft, then pretrain) is the one used. A stage directory or a model directory
(`config.json` + `model.safetensors`, as `build --out` writes) works too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from .data.chatml import render
from .data.records import Conversation, Turn
from .data.tokenizer import load_tokenizer
from .export import CONFIG_FILE, WEIGHTS_FILE, load_model_files

STAGES_NEWEST_FIRST = ("dpo", "distill", "sft", "pretrain")


def find_model_dir(path: Path) -> Path:
    path = Path(path)
    for candidate in (path, path / "final", *(path / stage / "final" for stage in STAGES_NEWEST_FIRST)):
        if (candidate / CONFIG_FILE).is_file() and (candidate / WEIGHTS_FILE).is_file():
            return candidate
    raise InputError(f"{path}: no trained model here (looked for config.json + model.safetensors in it, in final/, "
                     "and in <stage>/final/)")


def generate_text(path: Path, prompt: str, *, chat: bool, tokenizer_dir: Path | None = None, max_new_tokens: int = 64,
                  temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0, device: str = "cpu") -> str:
    model_dir = find_model_dir(path)
    tokenizer = load_tokenizer(tokenizer_dir or model_dir)
    model = load_model_files(model_dir, device=device).eval()
    text = render(Conversation((Turn("user", prompt),)), add_generation_prompt=True) if chat else prompt
    ids = ([] if chat else [tokenizer.bos_id]) + tokenizer.encode(text)
    room = model.max_position_embeddings - len(ids)
    if room <= 0:
        raise InputError(f"the prompt is {len(ids)} tokens; the model takes at most {model.max_position_embeddings}")
    generator = torch.Generator(device=device).manual_seed(seed)
    output = model.generate(torch.tensor([ids], device=device), max_new_tokens=min(max_new_tokens, room),
                            temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=tokenizer.eos_id,
                            pad_token_id=tokenizer.pad_id, generator=generator)
    new = [t for t in output[0, len(ids):].tolist() if t not in (tokenizer.eos_id, tokenizer.pad_id)]
    return tokenizer.decode(new)
