"""`tokenizer train`: a byte-level BPE tokenizer in MiniMind's layout, from local files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import app, console, err_console, guarded

tokenizer_app = typer.Typer(help="Train a tokenizer in MiniMind's layout (or check one).", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("train")
@guarded
def tokenizer_train(
    corpus: Annotated[list[Path], typer.Argument(help="Text or JSONL files (pretrain text, SFT conversations, "
                                                 "preference pairs: every string in them is used).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for tokenizer.json and tokenizer_config.json.",
                                      show_default=False)],
    vocab_size: Annotated[int, typer.Option("--vocab-size", "--vocab_size", min=8, max=2**31 - 1, help="Ids in all, special tokens included "
                                            "(the card's spec: 6400).")] = 6400,
    min_frequency: Annotated[int, typer.Option("--min-frequency", min=1, help="Merge only pairs seen this often.")] = 2,
) -> None:
    """Train byte-level BPE with MiniMind's special tokens: `<|endoftext|>` = 0 (pad), `<|im_start|>` = 1
    (BOS), `<|im_end|>` = 2 (EOS), `<think>` = 3, `</think>` = 4. The directory loads in
    transformers.AutoTokenizer, ChatML chat template included.

    Example: `minimind-spec tokenizer train data/pretrain.jsonl data/sft.jsonl --vocab-size 6400 --out tokenizer/`.
    """
    from ..engine.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(corpus, vocab_size, out, min_frequency)
    if tokenizer.vocab_size < vocab_size:
        err_console.print(f"[yellow]warning[/yellow] the corpus gave {tokenizer.vocab_size} ids, not {vocab_size}: "
                          "too little text for that many merges; a spec's vocab must equal the tokenizer's size", markup=True)
    console.print(f"wrote {out}: {tokenizer.vocab_size} ids (pad {tokenizer.pad_id}, bos {tokenizer.bos_id}, "
                  f"eos {tokenizer.eos_id}, <think> {list(tokenizer.think_open)}, </think> {list(tokenizer.think_close)})")
