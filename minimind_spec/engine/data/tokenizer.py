"""Tokenizers in MiniMind's layout: train one (byte-level BPE) or load any `tokenizer.json`.

MiniMind's special tokens sit at the lowest ids: `<|endoftext|>` = 0 (also padding),
`<|im_start|>` = 1 (BOS, opens a ChatML turn), `<|im_end|>` = 2 (EOS, closes one). Trained
tokenizers add `<think>` = 3 and `</think>` = 4 as single, never-split tokens. A loaded
tokenizer may give the reasoning tags other ids, or split them into several tokens: they are
found by their text. `train_tokenizer` writes `tokenizer.json` and a `tokenizer_config.json`
with our chat template (`CHAT_TEMPLATE`), so `transformers.AutoTokenizer` loads the directory as is.

Our template writes the same ChatML as MiniMind's own template (tools in the first system turn,
`<tool_call>` blocks in assistant turns, tool results grouped in `<tool_response>` blocks of one
user turn, reasoning in a `<think>` block, the `open_thinking` switch of the generation prompt)
but for one thing: MiniMind's writes an empty `<think>\n\n</think>\n\n` in every assistant turn
without reasoning and in the thinking-off generation prompt; ours writes none. `load_tokenizer`
reads which one the directory's chat template does (it renders a probe conversation with jinja2
as transformers would) into `ChatTokenizer.chat_format`, and `chatml` renders accordingly, so
training text and generation prompts are what the template itself produces.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ...errors import Problem, SpecError
from ...model_files import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE
from .records import DataError, decode_line, tojson

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, THINK_OPEN, THINK_CLOSE)  # ids 0..4 in a trained tokenizer
CONFIG_FILE = TOKENIZER_CONFIG_FILE

CHAT_TEMPLATE_FILE = "chat_template.jinja"  # where newer transformers versions save a chat template

# The system turn's tool instructions, word for word MiniMind's: the tool schemas go between them, one per line.
TOOLS_HEADER = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_FOOTER = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
                "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
                "<args-json-object>}\n</tool_call>")

# ChatML as MiniMind's template writes it, less the empty think block (see the module docstring). Every tag
# trims the whitespace before it, so the layout below renders to nothing, with or without trim_blocks.
CHAT_TEMPLATE = (r"""{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0].role == 'system' %}
{{- messages[0].content + '\n\n' }}
{%- endif %}
{{- """ + json.dumps(TOOLS_HEADER) + r""" }}
{%- for tool in tools %}
{{- '\n' + (tool | tojson) }}
{%- endfor %}
{{- """ + json.dumps(TOOLS_FOOTER + EOS_TOKEN + "\n") + r""" }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
{%- set content = message.content if message.content is string else '' %}
{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
{{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}
{%- elif message.role == 'assistant' %}
{%- if message.reasoning_content is string %}
{%- set reasoning = message.reasoning_content %}
{%- elif '</think>' in content %}
{%- set reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
{%- set content = content.split('</think>')[-1].lstrip('\n') %}
{%- else %}
{%- set reasoning = '' %}
{%- endif %}
{{- '<|im_start|>assistant\n' }}
{%- if reasoning.strip('\n') %}
{{- '<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' }}
{%- endif %}
{{- content.lstrip('\n') }}
{%- for call in message.tool_calls or [] %}
{%- if content or not loop.first %}
{{- '\n' }}
{%- endif %}
{%- set call = call.function if call.function else call %}
{{- '<tool_call>\n{"name": "' }}
{{- call.name }}
{{- '", "arguments": ' }}
{{- call.arguments if call.arguments is string else (call.arguments | tojson) }}
{{- '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or loop.previtem.role != 'tool' %}
{{- '<|im_start|>user' }}
{%- endif %}
{{- '\n<tool_response>\n' + content + '\n</tool_response>' }}
{%- if loop.last or loop.nextitem.role != 'tool' %}
{{- '<|im_end|>\n' }}
{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
{%- if open_thinking is defined and open_thinking is true %}
{{- '<think>\n' }}
{%- endif %}
{%- endif %}""")


@dataclass(frozen=True)
class ChatFormat:
    """What a tokenizer's chat template writes beyond what the records fix. `empty_think`: an empty
    `<think>\n\n</think>\n\n` opens every assistant turn without reasoning and ends the thinking-off
    generation prompt (MiniMind's template); False: there is none (our CHAT_TEMPLATE)."""

    empty_think: bool = False


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
    chat_format: ChatFormat = field(default_factory=ChatFormat)  # what the directory's chat template writes

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text become their ids."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_with_starts(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids of `text` and, for each token, the index of the character it starts at (its offset as the
        tokenizer reports it; a post-processor that trims offsets may move it past leading spaces)."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return encoding.ids, [start for start, _ in encoding.offsets]

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
        chat_format=detect_chat_format(_chat_template(file.parent)),
    )


def _chat_template(directory: Path) -> str | None:
    """The chat template saved with a tokenizer: `chat_template.jinja`, else tokenizer_config.json's
    `chat_template` (its "default" one when it names several); None when there is none."""
    jinja, config = directory / CHAT_TEMPLATE_FILE, directory / CONFIG_FILE
    try:
        if jinja.is_file():
            return jinja.read_bytes().decode("utf-8")
        if not config.is_file():
            return None
        data = json.loads(config.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = jinja if jinja.is_file() else config
        raise SpecError(Problem("", f"{where} cannot be read: {exc}", "save the tokenizer again")) from None
    template = data.get("chat_template") if isinstance(data, dict) else None
    if isinstance(template, list):
        named = {item.get("name"): item.get("template") for item in template if isinstance(item, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def render_chat_template(template: str, messages: list[dict[str, Any]], **context: Any) -> str:
    """`template` rendered the way transformers renders chat templates (a sandboxed jinja2 environment with
    trim_blocks and lstrip_blocks, loop controls, `raise_exception`, and its `tojson`), without transformers."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(template).render(messages=messages, **context)


def detect_chat_format(template: str | None) -> ChatFormat:
    """What `template` writes, read from its rendering of a probe conversation (a user turn, an assistant turn
    without reasoning). No template, or one that fails on the probe, reads as ours."""
    if template is None:
        return ChatFormat()
    try:
        text = render_chat_template(template, _PROBE)
    except Exception:  # noqa: BLE001 - a template can raise anything; one that cannot render the probe is not MiniMind's
        return ChatFormat()
    return ChatFormat(empty_think=f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\nHello" in text)


def corpus_texts(paths: Iterable[Path]) -> Iterator[str]:
    """Training text from files: JSONL lines give their "text", every conversation turn's
    content, reasoning, tools and tool calls, and preference pairs' strings (a line that is not
    JSON is left out); other files give their lines. Files are read in binary and decoded line by
    line: a UTF-8 byte-order mark at the start is dropped; a line that is not UTF-8 is a DataError."""
    for path in paths:
        is_jsonl = path.suffix.lower() in (".jsonl", ".json")
        with open(path, "rb") as handle:
            for line_no, raw in enumerate(handle, 1):
                try:
                    line = decode_line(raw, line_no)
                except ValueError as exc:
                    raise DataError(path, line_no, str(exc)) from None
                if not is_jsonl:
                    yield line
                    continue
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
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
        for key in ("tools", "tool_calls"):  # JSON, as the chat template writes it
            if value.get(key):
                yield value[key] if isinstance(value[key], str) else tojson(value[key])


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
