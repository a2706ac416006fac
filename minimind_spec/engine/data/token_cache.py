"""Tokenize a data file once into a memory-mapped token cache that every later run (and every
DDP rank) reuses.

The cache of a file lives in `CACHE_DIR/<key>/`, where the key hashes the data file's bytes,
the tokenizer's `tokenizer.json` and chat format, the record kind, the length cap and the cache
format, so a changed file or tokenizer never reuses a stale cache. It holds:
- `tokens.bin`: every sample's ids, back to back (uint16 when the vocabulary fits, else uint32);
- `trained.bin` / `reasoning.bin`: one byte per token, 1 where the token is trained (SFT: the
  assistant spans) / inside a `<think>` block;
- `offsets.bin`: int64 sample boundaries (n + 1 values);
- `meta.json`: counts (samples, tokens, truncated samples, skipped lines with their numbers).
A preference pair is two samples, chosen (2i) then rejected (2i + 1); a pair where either side
keeps no response token within the length cap is a bad line (skipped with `skip_bad_lines`).
A GRPO prompt is one sample, its turns without a generation prompt (the stage adds it), nothing
trained; a prompt over the length cap keeps its end (the turn the model answers).
The file is read as a stream of raw lines in chunks and decoded, parsed and tokenized by worker
processes (`records.parse_line`: a UTF-8 byte-order mark at the start is dropped, a line that is
not UTF-8 is a bad line), chunk results written in order, so peak memory does not grow with
the file. The cache is built in a temporary directory and renamed into place: a failed build
removes it, and a build killed outright leaves one that the next build removes (its process is
gone), so nothing half-built is ever read or kept.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from .chatml import IGNORE_INDEX, encode_conversation, encode_document, encode_prompt
from .records import Conversation, DataError, Document, PreferencePair, Prompt, RecordKind, parse_line
from .tokenizer import ChatTokenizer, load_tokenizer

CACHE_FORMAT = 2  # 2: tool calls, inline reasoning and the tokenizer's chat format
CHUNK_LINES = 2048


@dataclass(frozen=True)
class CacheMeta:
    samples: int
    tokens: int
    trained_tokens: int
    truncated: int  # samples cut at max_length
    skipped_lines: tuple[tuple[int, str], ...]  # (line, why) of malformed lines skipped
    token_dtype: str
    source: str
    kind: str
    max_length: int | None


def _file_digest(path: Path, digest: hashlib._Hash) -> None:
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)


def cache_key(data: Path, tokenizer: ChatTokenizer, kind: RecordKind, max_length: int | None) -> str:
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{kind}|{max_length}|".encode())
    _file_digest(data, digest)
    digest.update(b"|tokenizer|")
    _file_digest(tokenizer.path, digest)
    digest.update(f"|{tokenizer.chat_format}".encode())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class _Chunk:
    ids: np.ndarray  # int64 (tokens,)
    trained: np.ndarray  # uint8 (tokens,)
    reasoning: np.ndarray  # uint8 (tokens,)
    lengths: list[int]
    truncated: int
    skipped: list[tuple[int, str]]
    error: tuple[int, str] | None  # the first bad line when bad lines are not skipped


_WORKER_TOKENIZER: ChatTokenizer | None = None


def _init_worker(tokenizer_path: str) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = load_tokenizer(tokenizer_path)


def _encode_chunk(job: tuple[RecordKind, int, list[bytes], int | None, bool], tokenizer: ChatTokenizer | None = None) -> _Chunk:
    kind, first_line, lines, max_length, skip_bad = job
    tokenizer = tokenizer or _WORKER_TOKENIZER
    assert tokenizer is not None
    ids: list[int] = []
    trained: list[int] = []
    reasoning: list[int] = []
    lengths: list[int] = []
    truncated = 0
    skipped: list[tuple[int, str]] = []
    for line_no, line in enumerate(lines, first_line):
        try:
            record = parse_line(line, line_no, kind)
        except ValueError as exc:
            why = str(exc)
            if not skip_bad:
                return _Chunk(np.empty(0, np.int64), np.empty(0, np.uint8), np.empty(0, np.uint8), [], 0, [], (line_no, why))
            skipped.append((line_no, why))
            continue
        if record is None:  # a blank line
            continue
        if isinstance(record, PreferencePair):  # two samples, chosen then rejected
            sides = [encode_document(tokenizer, side, max_length) if isinstance(side, str)
                     else encode_conversation(tokenizer, side, max_length) for side in (record.chosen, record.rejected)]
            if not all(any(label != IGNORE_INDEX for label in side.labels[1:]) for side in sides):
                why = f"no response token left within {max_length} tokens" if max_length else "a side has no response token"
                if not skip_bad:
                    return _Chunk(np.empty(0, np.int64), np.empty(0, np.uint8), np.empty(0, np.uint8), [], 0, [], (line_no, why))
                skipped.append((line_no, why))
                continue
        elif isinstance(record, Document):
            sides = [encode_document(tokenizer, record.text, max_length)]
        elif isinstance(record, Prompt):
            sides = [encode_prompt(tokenizer, record.conversation, max_length)]
        else:
            assert isinstance(record, Conversation)
            sides = [encode_conversation(tokenizer, record, max_length)]
        for encoded in sides:
            ids += encoded.input_ids
            trained += [label != IGNORE_INDEX for label in encoded.labels]
            reasoning += encoded.reasoning
            lengths.append(len(encoded.input_ids))
            truncated += encoded.truncated
    return _Chunk(np.asarray(ids, np.int64), np.asarray(trained, np.uint8), np.asarray(reasoning, np.uint8),
                  lengths, truncated, skipped, None)


def _jobs(path: Path, kind: RecordKind, max_length: int | None, skip_bad: bool) -> Iterator[tuple]:
    with open(path, "rb") as handle:  # raw lines: the workers decode them, so a line that is not UTF-8 is a bad line
        line = 1
        while lines := list(islice(handle, CHUNK_LINES)):
            yield (kind, line, lines, max_length, skip_bad)
            line += len(lines)


class TokenCache:
    """A built cache, memory-mapped: `sample(i)` gives one sample's ids and masks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        raw = json.loads((directory / "meta.json").read_text())
        raw["skipped_lines"] = tuple(tuple(item) for item in raw["skipped_lines"])
        self.meta = CacheMeta(**raw)
        self.offsets = np.memmap(directory / "offsets.bin", dtype=np.int64, mode="r")
        dtype = np.dtype(self.meta.token_dtype)
        self.tokens = np.memmap(directory / "tokens.bin", dtype=dtype, mode="r") if self.meta.tokens else np.empty(0, dtype)
        self.trained = np.memmap(directory / "trained.bin", dtype=np.uint8, mode="r") if self.meta.tokens else np.empty(0, np.uint8)
        self.reasoning = (np.memmap(directory / "reasoning.bin", dtype=np.uint8, mode="r") if self.meta.tokens
                          else np.empty(0, np.uint8))

    def __len__(self) -> int:
        return self.meta.samples

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.tokens[start:end], self.trained[start:end], self.reasoning[start:end]


STAGING_PREFIX = ".building."


def _remove_abandoned_builds(cache_dir: Path) -> None:
    """Remove the staging directories of builds whose process is gone (killed mid-build): nothing half-built stays."""
    for staging in cache_dir.glob(f"{STAGING_PREFIX}*"):
        pid = staging.name.removeprefix(STAGING_PREFIX).split(".")[0]
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except (ValueError, ProcessLookupError):
            shutil.rmtree(staging, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


def build_token_cache(data: str | Path, tokenizer: ChatTokenizer, kind: RecordKind, cache_dir: str | Path,
                      max_length: int | None = None, skip_bad_lines: bool = False, workers: int | None = None,
                      parallel_min_bytes: int = 4 << 20) -> TokenCache:
    """The token cache of `data`, built (in parallel workers) unless an identical one exists."""
    data, cache_dir = Path(data), Path(cache_dir)
    if not data.is_file():
        raise DataError(data, None, "file not found")
    final = cache_dir / cache_key(data, tokenizer, kind, max_length)
    if (final / "meta.json").is_file():
        return TokenCache(final)
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(cache_dir)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}.", dir=cache_dir))
    try:
        meta = _write_cache(data, tokenizer, kind, max_length, skip_bad_lines, workers, staging, parallel_min_bytes)
        if meta.samples == 0:
            raise DataError(data, None, "no usable records" + (" (the file is empty)" if data.stat().st_size == 0 else ""))
        try:
            os.replace(staging, final)
        except OSError:  # another process (a DDP rank) finished the same cache first
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TokenCache(final)


def _write_cache(data: Path, tokenizer: ChatTokenizer, kind: RecordKind, max_length: int | None, skip_bad: bool,
                 workers: int | None, staging: Path, parallel_min_bytes: int) -> CacheMeta:
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    samples = tokens = trained_total = truncated = 0
    skipped: list[tuple[int, str]] = []
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    jobs = _jobs(data, kind, max_length, skip_bad)
    small = data.stat().st_size < parallel_min_bytes  # small files: worker start-up costs more than it saves
    pool = None if small or workers <= 1 else multiprocessing.get_context("spawn").Pool(
        workers, initializer=_init_worker, initargs=(str(tokenizer.path),))
    try:
        results = (pool.imap(_encode_chunk, jobs) if pool is not None
                   else (_encode_chunk(job, tokenizer) for job in jobs))
        with open(staging / "tokens.bin", "wb") as ids_out, open(staging / "trained.bin", "wb") as trained_out, \
                open(staging / "reasoning.bin", "wb") as reasoning_out, open(staging / "offsets.bin", "wb") as offsets_out:
            np.zeros(1, np.int64).tofile(offsets_out)  # offsets[0]; each chunk appends its samples' ends (memory stays flat)
            for chunk in results:
                if chunk.error is not None:
                    raise DataError(data, chunk.error[0], chunk.error[1])
                chunk.ids.astype(dtype).tofile(ids_out)
                chunk.trained.tofile(trained_out)
                chunk.reasoning.tofile(reasoning_out)
                (tokens + np.cumsum(np.asarray(chunk.lengths, np.int64), dtype=np.int64)).tofile(offsets_out)
                samples += len(chunk.lengths)
                tokens += len(chunk.ids)
                trained_total += int(chunk.trained.sum())
                truncated += chunk.truncated
                skipped += chunk.skipped
            for handle in (ids_out, trained_out, reasoning_out, offsets_out):
                handle.flush()
                os.fsync(handle.fileno())
    finally:
        if pool is not None:
            pool.terminate()
    meta = CacheMeta(samples=samples, tokens=tokens, trained_tokens=trained_total, truncated=truncated,
                     skipped_lines=tuple(skipped), token_dtype=np.dtype(dtype).name, source=str(data), kind=kind,
                     max_length=max_length)
    (staging / "meta.json").write_text(json.dumps(meta.__dict__, indent=2) + "\n")
    return meta
