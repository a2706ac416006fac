"""Evaluate a trained model on a JSONL file: perplexity, multiple choice, or exact match, the way
lm-evaluation-harness defines each, so the numbers compare with its numbers.

`minimind-spec eval` (cli/eval_commands.py) calls `evaluate`; the model is found as `generate`
finds it (`model_files.find_model`) and scored with the tokenizer beside it. One file holds one
record kind, told by its first record's keys (or given):

- text, `{"text": ...}`: each text is `[bos] + encode(text)` and every token of `encode(text)` is
  scored, the BOS being context only and no EOS scored (lm-eval's `loglikelihood_rolling`, whose
  first window is conditioned on the BOS). Token perplexity is exp(NLL / predicted tokens);
  lm-eval's aggregates are exp(NLL / words) (`word_perplexity`, words as `re.split(r"\\s+", text)`
  counts them), exp(NLL / UTF-8 bytes) (`byte_perplexity`) and NLL / (ln 2 * bytes)
  (`bits_per_byte`), each a sum over the whole file. A text longer than the window (the model's
  `max_position_embeddings`, or `max_length`) is scored in windows of at most that many inputs,
  each token predicted exactly once with as much left context as the window allows: the first
  window predicts its whole length, each next one the following `stride` tokens (default half the
  window). `stride` = window is lm-eval's disjoint rolling windows exactly.
- multiple choice, `{"question": str, "choices": [str, ...], "answer": int}`: lm-eval's
  `multiple_choice` with its default `target_delimiter=" "`. The context is the question (its
  trailing whitespace moved to the continuation, as lm-eval's `_encode_pair` does), the
  continuation " " + choice; `encode(context + continuation)` is split after `len(encode(context))`
  tokens, the context gets a leading BOS, and a choice's score is the summed log-likelihood of
  its continuation tokens (the context cut from the left to fit the window). `acc` takes the
  argmax of the sums, `acc_norm` of each sum divided by `len(choice)` in characters (lm-eval's
  `completion_len`: the choice's own characters, the delimiter not counted); ties go to the first.
- conversation, MiniMind's SFT shape `{"conversations": [...]}` ending with the assistant's
  reference answer: greedy generation from the conversation before that turn, rendered by the
  tokenizer's chat template with its generation prompt (thinking off), up to EOS or
  `max_new_tokens` (default: the reference's tokens + 32). `exact_match` compares the stripped
  answer, the text after the model's last `</think>` when it writes one, with the stripped reference
  (its content and tool calls as the template writes them, without reasoning).

Scoring is batched: rows are sorted by length, right-padded and masked; generation batches
left-pad prompts of similar length. Bad input is a `DataError` naming file and line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from builders.model import MiniMindForCausalLM

from ..errors import InputError
from ..model_files import ModelFiles, find_model
from .data.chatml import IGNORE_INDEX, assistant_body, render
from .data.records import Conversation, DataError, Document, json_line, parse_record
from .data.tokenizer import THINK_CLOSE, ChatTokenizer, load_tokenizer
from .export import require_device, load_model

EvalKind = Literal["text", "choice", "conversation"]
SHAPES = '{"text": ...}, {"question": ..., "choices": [...], "answer": N} or {"conversations": [...]}'
EXTRA_NEW_TOKENS = 32  # generation room beyond the reference's length


@dataclass(frozen=True)
class MultipleChoice:
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices


EvalRecord = Document | MultipleChoice | Conversation


@dataclass(frozen=True)
class EvalSettings:
    max_length: int | None = None  # the window in tokens; None: the model's max_position_embeddings
    stride: int | None = None  # new tokens scored per later window; None: half the window
    batch_size: int = 8
    max_new_tokens: int | None = None  # conversation: None is the reference's length + EXTRA_NEW_TOKENS
    device: str = "cpu"
    progress: bool = False


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    n: int  # records it is computed over


@dataclass(frozen=True)
class TextScore:
    line: int
    loglikelihood: float  # of the text's tokens, summed
    tokens: int
    bytes: int
    words: int


@dataclass(frozen=True)
class ChoiceScore:
    line: int
    loglikelihoods: tuple[float, ...]  # one per choice, summed over its continuation tokens
    answer: int
    pred: int  # argmax of the sums
    pred_norm: int  # argmax of the sums per character of the choice


@dataclass(frozen=True)
class Answer:
    line: int
    output: str  # what the model wrote, up to EOS
    answer: str  # its text after the last </think>, stripped
    reference: str
    match: bool


RecordResult = TextScore | ChoiceScore | Answer
Outcome = tuple[list[Metric], dict[str, int | float], list[RecordResult]]  # metrics, the totals they divide, per record


@dataclass(frozen=True)
class EvalReport:
    kind: EvalKind
    data: Path
    metrics: tuple[Metric, ...]
    totals: dict[str, int | float]  # what the metrics divide: NLL, tokens, bytes, words; right answers
    records: tuple[RecordResult, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "data": str(self.data), "n": len(self.records),
                "metrics": {m.name: m.value for m in self.metrics}, "totals": self.totals,
                "records": [asdict(record) for record in self.records]}


# --- reading -----------------------------------------------------------------------------------------

def record_kind(data: Any) -> EvalKind:
    """The kind a record's keys say it is; ValueError names the shapes understood."""
    if not isinstance(data, dict):
        raise ValueError(f"a record is a JSON object, got {type(data).__name__}")
    if "text" in data:
        return "text"
    if "conversations" in data:
        return "conversation"
    if "question" in data or "choices" in data:
        return "choice"
    keys = ", ".join(sorted(data)) or "none"
    raise ValueError(f"unknown record shape (keys: {keys}); expected {SHAPES}, or pass --kind")


def parse_eval_record(data: Any, kind: EvalKind) -> EvalRecord:
    """One JSON value as a record of `kind`; ValueError says what is wrong."""
    if kind == "text":
        document = parse_record(data, "pretrain")
        assert isinstance(document, Document)
        return document
    if kind == "conversation":
        conversation = parse_record(data, "conversation")
        assert isinstance(conversation, Conversation)
        if conversation.turns[-1].role != "assistant":
            raise ValueError(f"the last turn is a {conversation.turns[-1].role} turn; exact match needs the reference "
                             "answer as the last (assistant) turn")
        return conversation
    if not isinstance(data, dict):
        raise ValueError(f"a record is a JSON object, got {type(data).__name__}")
    question, choices, answer = data.get("question"), data.get("choices"), data.get("answer")
    if not isinstance(question, str):
        raise ValueError('a multiple-choice record needs a string "question"')
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise ValueError('"choices" must be a list of at least two strings')
    if not all(choices):
        raise ValueError('"choices" holds an empty string: acc_norm divides by its length')
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ValueError(f'"answer" must be the index of the right choice, an integer in [0, {len(choices)}); got {answer!r}')
    return MultipleChoice(question, tuple(choices), answer)


def read_eval_records(path: Path, kind: EvalKind | None = None) -> tuple[EvalKind, list[tuple[int, EvalRecord]]]:
    """The file's kind (the first record's, unless given) and its (line, record) pairs; blank lines skipped.
    Any line that is not UTF-8, not JSON or not a record of the kind is a DataError naming file and line."""
    if not path.is_file():
        raise DataError(path, None, "file not found")
    records: list[tuple[int, EvalRecord]] = []
    given, line_no = kind is not None, 0
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, 1):
            try:
                data = json_line(raw, line_no)
                if data is None:
                    continue
                if kind is None:
                    kind = record_kind(data)
                elif not given and record_kind(data) != kind:
                    raise ValueError(f"a {record_kind(data)} record in a file of {kind} records (line {records[0][0]} "
                                     "is one); a file holds one kind")
                records.append((line_no, parse_eval_record(data, kind)))
            except ValueError as exc:
                raise DataError(path, line_no, str(exc)) from None
    if kind is None or not records:
        raise DataError(path, None, "no records" + (" (the file is empty)" if line_no == 0 else " (only blank lines)"))
    return kind, records


# --- scoring ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One forward pass: `inputs`, and the `targets` predicted by the last len(targets) input positions."""

    inputs: tuple[int, ...]
    targets: tuple[int, ...]


def windows(length: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(start, end, scored) for a sequence of `length` tokens whose positions 1..length-1 are targets: inputs
    seq[start:end] (at most `window`), predicting seq[end - scored + 1 : end + 1]. Each target once."""
    done = 0  # targets up to this position are scored
    while done < length - 1:
        end = min(done + (window if done == 0 else stride), length - 1)  # the last target of this window
        yield max(0, end - window), end, end - done
        done = end


def text_rows(ids: Sequence[int], bos: int, window: int, stride: int) -> list[Row]:
    """The rows scoring every token of `ids` after a BOS."""
    seq = (bos, *ids)
    return [Row(seq[start:end], seq[end - scored + 1:end + 1]) for start, end, scored in windows(len(seq), window, stride)]


def choice_row(tokenizer: ChatTokenizer, question: str, continuation: str, window: int) -> Row:
    """The row scoring `continuation` after `question`, as lm-eval's `_encode_pair` splits them, BOS first."""
    spaces = len(question) - len(question.rstrip())
    if spaces:
        question, continuation = question[:-spaces], question[-spaces:] + continuation
    context = tokenizer.encode(question)
    whole = tokenizer.encode(question + continuation)
    sequence = [tokenizer.bos_id, *context, *whole[len(context):]][-(window + 1):]  # left-truncated to fit
    return Row(tuple(sequence[:-1]), tuple(whole[len(context):]))


def _progress(enabled: bool, label: str) -> Progress:
    """A progress bar on stderr, shown only where stderr is a terminal (nothing at all is written elsewhere)."""
    console = Console(stderr=True)
    return Progress(TextColumn(f"[bold]{label}[/bold]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not (enabled and console.is_terminal), transient=True, console=console)


@torch.inference_mode()
def score_rows(model: MiniMindForCausalLM, rows: Sequence[Row], *, pad_id: int, batch_size: int, device: str,
               advance: Callable[[int], None] = lambda n: None) -> list[float]:
    """The summed log-likelihood of each row's targets, in float64, batched (longest rows first, right-padded)."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].inputs))
    sums = [0.0] * len(rows)
    for first in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[first:first + batch_size]]
        T = len(batch[0].inputs)
        ids = torch.full((len(batch), T), pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros(len(batch), T, dtype=torch.long)  # (B, T) 1 = token
        labels = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long)  # (B, T) target of each position
        for b, row in enumerate(batch):
            n, k = len(row.inputs), len(row.targets)
            ids[b, :n], mask[b, :n], labels[b, n - k:n] = torch.tensor(row.inputs), 1, torch.tensor(row.targets)
        logits = model(ids.to(device), attention_mask=mask.to(device)).logits.float()  # (B, T, V)
        nll = F.cross_entropy(logits.flatten(0, 1), labels.to(device).flatten(), ignore_index=IGNORE_INDEX,
                              reduction="none").view(len(batch), T)  # (B, T), 0 where no target
        for b, total in enumerate(nll.double().sum(dim=1).tolist()):
            sums[order[first + b]] = -total
        advance(len(batch))
    return sums


def evaluate_texts(model: MiniMindForCausalLM, tokenizer: ChatTokenizer, records: list[tuple[int, Document]],
                   settings: EvalSettings, window: int, stride: int) -> Outcome:
    encoded = [tokenizer.encode(doc.text) for _, doc in records]
    rows = [text_rows(ids, tokenizer.bos_id, window, stride) for ids in encoded]
    flat = [row for doc_rows in rows for row in doc_rows]
    with _progress(settings.progress, "perplexity") as progress:
        task = progress.add_task("score", total=len(flat))
        scores = score_rows(model, flat, pad_id=tokenizer.pad_id, batch_size=settings.batch_size, device=settings.device,
                            advance=lambda n: progress.advance(task, n))
    details, at = [], 0
    for (line, doc), ids, doc_rows in zip(records, encoded, rows):
        details.append(TextScore(line, sum(scores[at:at + len(doc_rows)]), len(ids), len(doc.text.encode("utf-8")),
                                 len(re.split(r"\s+", doc.text))))  # words as lm-eval counts them
        at += len(doc_rows)
    nll = -sum(d.loglikelihood for d in details)
    tokens, size, words = sum(d.tokens for d in details), sum(d.bytes for d in details), sum(d.words for d in details)
    if tokens == 0:
        raise InputError("the texts hold no tokens to score")
    n = len(details)
    metrics = [Metric("perplexity", math.exp(nll / tokens), n), Metric("bits_per_byte", nll / (math.log(2) * size), n),
               Metric("byte_perplexity", math.exp(nll / size), n), Metric("word_perplexity", math.exp(nll / words), n)]
    return metrics, {"nll": nll, "tokens": tokens, "bytes": size, "words": words}, list(details)


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # the first of equal maxima, as np.argmax


def evaluate_choices(model: MiniMindForCausalLM, tokenizer: ChatTokenizer, records: list[tuple[int, MultipleChoice]],
                     settings: EvalSettings, window: int, path: Path) -> Outcome:
    rows = []
    for line, record in records:
        for i, choice in enumerate(record.choices):
            row = choice_row(tokenizer, record.question, " " + choice, window)
            if not row.targets or len(row.targets) > window:
                raise DataError(path, line, f"choice {i} is {len(row.targets)} tokens after the question; "
                                f"it must be 1 to {window} (the window)")
            rows.append(row)
    with _progress(settings.progress, "choices") as progress:
        task = progress.add_task("score", total=len(rows))
        scores = score_rows(model, rows, pad_id=tokenizer.pad_id, batch_size=settings.batch_size, device=settings.device,
                            advance=lambda n: progress.advance(task, n))
    details, at = [], 0
    for line, record in records:
        logliks = tuple(scores[at:at + len(record.choices)])
        at += len(record.choices)
        details.append(ChoiceScore(line, logliks, record.answer, _argmax(logliks),
                                   _argmax([ll / len(choice) for ll, choice in zip(logliks, record.choices)])))
    n = len(details)
    acc = sum(d.pred == d.answer for d in details)
    acc_norm = sum(d.pred_norm == d.answer for d in details)
    metrics = [Metric("acc", acc / n, n), Metric("acc_norm", acc_norm / n, n)]
    return metrics, {"correct": acc, "correct_norm": acc_norm}, list(details)


def answer_text(output: str) -> str:
    """The answer part of a generated text: after its last `</think>`, stripped."""
    return output.split(THINK_CLOSE)[-1].strip()


@torch.inference_mode()
def greedy(model: MiniMindForCausalLM, tokenizer: ChatTokenizer, prompts: Sequence[Sequence[int]], limits: Sequence[int],
           device: str) -> list[list[int]]:
    """Greedy continuations of left-padded prompts, each cut at its limit and its EOS (padding ids dropped, as `generate` does)."""
    T, new = max(len(p) for p in prompts), max(limits)
    if len(prompts) > 1 and T + new > model.max_position_embeddings:  # together they do not fit: one at a time
        return [out for p, limit in zip(prompts, limits) for out in greedy(model, tokenizer, [p], [limit], device)]
    ids = torch.full((len(prompts), T), tokenizer.pad_id, dtype=torch.long)  # (B, T) left-padded
    mask = torch.zeros(len(prompts), T, dtype=torch.long)  # (B, T)
    for b, prompt in enumerate(prompts):
        ids[b, T - len(prompt):], mask[b, T - len(prompt):] = torch.tensor(prompt), 1
    output = model.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=new,
                            eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)  # (B, T + n)
    results = []
    for b, limit in enumerate(limits):
        tokens = output[b, T:T + limit].tolist()
        tokens = tokens[:tokens.index(tokenizer.eos_id)] if tokenizer.eos_id in tokens else tokens
        results.append([t for t in tokens if t != tokenizer.pad_id])
    return results


def evaluate_conversations(model: MiniMindForCausalLM, tokenizer: ChatTokenizer, records: list[tuple[int, Conversation]],
                           settings: EvalSettings, path: Path) -> Outcome:
    prompts, limits, references = [], [], []
    for line, conversation in records:
        last = conversation.turns[-1]
        reference = assistant_body(replace(last, reasoning=None))  # content and tool calls, no think block
        prompt = tokenizer.encode(render(replace(conversation, turns=conversation.turns[:-1]), add_generation_prompt=True,
                                         chat_format=tokenizer.chat_format))
        room = model.max_position_embeddings - len(prompt)
        if room <= 0:
            raise DataError(path, line, f"the prompt is {len(prompt)} tokens; the model takes at most "
                            f"{model.max_position_embeddings}")
        wanted = settings.max_new_tokens or len(tokenizer.encode(reference)) + EXTRA_NEW_TOKENS
        prompts.append(prompt)
        limits.append(min(wanted, room))
        references.append(reference)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch: little padding
    outputs: list[list[int]] = [[] for _ in prompts]
    with _progress(settings.progress, "generate") as progress:
        task = progress.add_task("generate", total=len(order))
        for first in range(0, len(order), settings.batch_size):
            batch = order[first:first + settings.batch_size]
            for i, out in zip(batch, greedy(model, tokenizer, [prompts[i] for i in batch], [limits[i] for i in batch],
                                            settings.device)):
                outputs[i] = out
            progress.advance(task, len(batch))
    details = []
    for (line, _), out, reference in zip(records, outputs, references):
        text = tokenizer.decode(out)
        details.append(Answer(line, text, answer_text(text), reference.strip(), answer_text(text) == reference.strip()))
    matches = sum(d.match for d in details)
    return [Metric("exact_match", matches / len(details), len(details))], {"matches": matches}, list(details)


def evaluate(source: Path | ModelFiles, data: Path, *, tokenizer_dir: Path | None = None, kind: EvalKind | None = None,
             settings: EvalSettings = EvalSettings()) -> EvalReport:
    """Score a model (a run, stage, checkpoint or model directory, or the files `find_model` found) on the
    JSONL file `data`."""
    files = source if isinstance(source, ModelFiles) else find_model(source)
    kind, records = read_eval_records(data, kind)  # bad data fails before the model loads
    where = tokenizer_dir or files.tokenizer_dir
    if where is None:
        raise InputError(f"{files.weights}: no tokenizer.json beside the model; pass --tokenizer DIR")
    tokenizer = load_tokenizer(where)
    require_device(settings.device)
    model = load_model(files.config, files.weights, device=settings.device).eval()
    if tokenizer.vocab_size > model.vocab_size:
        raise InputError(f"{tokenizer.path}: the tokenizer has {tokenizer.vocab_size} tokens, the model's vocabulary "
                         f"{model.vocab_size}; pass the tokenizer the model was trained with (--tokenizer)")
    window = settings.max_length or model.max_position_embeddings
    if not 2 <= window <= model.max_position_embeddings:
        raise InputError(f"--max-length {window}: the window must be 2 to {model.max_position_embeddings} tokens "
                         "(the model's max_position_embeddings)")
    stride = settings.stride or window // 2
    if not 1 <= stride <= window:
        raise InputError(f"--stride {stride}: it must be 1 to {window} (the window)")
    if kind == "text":
        result = evaluate_texts(model, tokenizer, [(i, r) for i, r in records if isinstance(r, Document)], settings,
                                window, stride)
    elif kind == "choice":
        result = evaluate_choices(model, tokenizer, [(i, r) for i, r in records if isinstance(r, MultipleChoice)],
                                  settings, window, data)
    else:
        result = evaluate_conversations(model, tokenizer, [(i, r) for i, r in records if isinstance(r, Conversation)],
                                        settings, data)
    metrics, totals, details = result
    if kind == "text":
        totals = {**totals, "window": window, "stride": stride}
    return EvalReport(kind, data, tuple(metrics), totals, tuple(details))
