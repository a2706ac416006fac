"""`generate`: text from a trained run (or any model directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app, console, guarded


@app.command("generate")
@guarded
def generate_command(
    run: Annotated[Path, typer.Argument(help="A run directory (its latest stage), a stage directory, or a model directory.",
                                        show_default=False)],
    prompt: Annotated[str, typer.Argument(help="The prompt (a user message with --chat).", show_default=False)],
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Wrap the prompt in the ChatML template "
                                       "(for SFT models) and stop at <|im_end|>.")] = True,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate at most.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", help="0 for greedy decoding.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling threshold.")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling.")] = 0,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="Tokenizer directory, if the run has none beside "
                                                   "the model.", show_default=False)] = None,
) -> None:
    """Generate text from a trained model, with its own tokenizer.

    Examples: `minimind-spec generate runs/tiny "what is 2 plus 3"`,
    `minimind-spec generate runs/tiny/pretrain "the cat" --no-chat --temperature 0.8`.
    """
    from ..engine.chat import generate_text

    console.print(generate_text(run, prompt, chat=chat, tokenizer_dir=tokenizer, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=top_p, seed=seed))
