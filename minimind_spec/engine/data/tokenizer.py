"""Tokenizers in MiniMind's layout: train one (byte-level BPE) or load any `tokenizer.json`.

MiniMind's special tokens sit at the lowest ids: `<|endoftext|>` = 0 (also padding),
`<|im_start|>` = 1 (BOS, opens a ChatML turn), `<|im_end|>` = 2 (EOS, closes one). Trained
tokenizers add `<think>` = 3 and `</think>` = 4 as single, never-split tokens. A loaded
tokenizer may give the reasoning tags other ids, or split them into several tokens: they are
found by their text. `train_tokenizer` writes `tokenizer.json` and a `tokenizer_config.json`
with the ChatML chat template, so `transformers.AutoTokenizer` loads the directory as is.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ...errors import Problem, SpecError
from ...model_files import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, THINK_OPEN, THINK_CLOSE)  # ids 0..4 in a trained tokenizer
CONFIG_FILE = TOKENIZER_CONFIG_FILE

# ChatML as MiniMind writes it; an assistant turn with reasoning_content puts it in a <think> block.
CHAT_TEMPLATE = (  # no whitespace control: transformers renders templates with trim_blocks
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' and message.get('reasoning_content') %}"
    "<think>\n{{ message['reasoning_content'] }}\n</think>\n\n{% endif %}"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class ChatTokenizer:
    """A loaded tokenizer with the ids training needs."""

    tokenizer: Tokenizer
    path: Path
    pad_id: int
    bos_id: int
    eos_id: int
    think_open: tuple[int, ...]  # the ids of "<think>" (one id when it is a single token)
    think_close: tuple[int, ...]

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text become their ids."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], keep_special: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=not keep_special)


def _token_id(tokenizer: Tokenizer, token: str, path: Path) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise SpecError(Problem("", f"{path}: the tokenizer has no {token!r} token",
                                "MiniMind's layout needs <|endoftext|>, <|im_start|> and <|im_end|>"))
    return token_id


def load_tokenizer(directory: str | Path) -> ChatTokenizer:
    """Load `tokenizer.json` from a directory (or the file itself) in MiniMind's layout."""
    path = Path(directory)
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise SpecError(Problem("", f"no {TOKENIZER_FILE} at {path}", "train one: minimind-spec tokenizer train CORPUS --out DIR"))
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as exc:  # noqa: BLE001 - the library raises plain Exceptions for bad files
        raise SpecError(Problem("", f"{file} is not a tokenizer.json: {exc}")) from None
    return ChatTokenizer(
        tokenizer=tokenizer, path=file,
        pad_id=_token_id(tokenizer, PAD_TOKEN, file), bos_id=_token_id(tokenizer, BOS_TOKEN, file),
        eos_id=_token_id(tokenizer, EOS_TOKEN, file),
        think_open=tuple(tokenizer.encode(THINK_OPEN, add_special_tokens=False).ids),
        think_close=tuple(tokenizer.encode(THINK_CLOSE, add_special_tokens=False).ids),
    )


def corpus_texts(paths: Iterable[Path]) -> Iterator[str]:
    """Training text from files: JSONL lines give their "text", every conversation turn's
    content and reasoning, and preference pairs' strings; other files give their lines."""
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            is_jsonl = path.suffix.lower() in (".jsonl", ".json")
            for line in handle:
                if not is_jsonl:
                    yield line
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                yield from _record_texts(record)


def _record_texts(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _record_texts(item)
    elif isinstance(value, dict):
        for key in ("text", "content", "reasoning_content", "chosen", "rejected", "conversations"):
            if key in value:
                yield from _record_texts(value[key])


def train_tokenizer(corpus: Iterable[Path], vocab_size: int, out_dir: str | Path, min_frequency: int = 2) -> ChatTokenizer:
    """Train a byte-level BPE tokenizer of `vocab_size` ids (specials included) on `corpus` and
    write it to `out_dir` atomically (a temporary directory renamed into place)."""
    paths = [Path(p) for p in corpus]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SpecError(Problem("", f"corpus file not found: {missing[0]}"))
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise SpecError(Problem("", f"vocab size {vocab_size} is too small: byte-level BPE needs 256 byte tokens "
                                    f"and {len(SPECIAL_TOKENS)} special tokens"))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus_texts(paths), trainer)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tokenizer.save(str(staging / TOKENIZER_FILE))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN, "unk_token": None, "add_bos_token": False, "add_eos_token": False,
        "model_max_length": 1_000_000, "chat_template": CHAT_TEMPLATE,
    }
    (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(staging, out)
        import shutil

        shutil.rmtree(old)
    else:
        os.replace(staging, out)
    return load_tokenizer(out)
