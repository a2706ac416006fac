"""Token cache and packing: tokenize once (in-process and in worker processes, same bytes),
reuse by key, rebuild when the file changes, errors with file and line, and rows that hold every
sample exactly once with labels only on the trained tokens."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from minimind_spec.engine.data.chatml import IGNORE_INDEX, encode_conversation
from minimind_spec.engine.data.packing import sample_layout, sample_row, stream_layout, stream_row
from minimind_spec.engine.data.records import Conversation, DataError, Turn
from minimind_spec.engine.data.token_cache import build_token_cache
from minimind_spec.engine.data.tokenizer import train_tokenizer

WORDS = "the cat sat on a mat and two plus three is five think answer question model small fast".split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    rng = random.Random(0)
    pretrain = root / "pretrain.jsonl"
    pretrain.write_text("".join(json.dumps({"text": sentence(rng, rng.randint(3, 40))}) + "\n" for _ in range(300)))
    sft = root / "sft.jsonl"
    lines = []
    for _ in range(200):  # SFT-shaped: mostly short answers, a few long ones
        turns = [{"role": "user", "content": sentence(rng, rng.randint(2, 12))},
                 {"role": "assistant", "content": sentence(rng, rng.choice([3, 5, 8, 60])),
                  **({"reasoning_content": sentence(rng, 6)} if rng.random() < 0.3 else {})}]
        lines.append(json.dumps({"conversations": turns}))
    sft.write_text("\n".join(lines) + "\n")
    tokenizer = train_tokenizer([pretrain], 300, root / "tok", min_frequency=1)
    return root, pretrain, sft, tokenizer


def test_cache_is_built_once_and_reused(corpus, tmp_path):
    _, pretrain, _, tokenizer = corpus
    cache = build_token_cache(pretrain, tokenizer, "pretrain", tmp_path)
    assert len(cache) == 300 and cache.meta.tokens == int(cache.offsets[-1]) and cache.tokens.dtype == np.uint16
    again = build_token_cache(pretrain, tokenizer, "pretrain", tmp_path)
    assert again.directory == cache.directory
    assert [p.name for p in tmp_path.iterdir()] == [cache.directory.name]  # no staging left behind
    changed = tmp_path / "changed.jsonl"
    changed.write_text(pretrain.read_text() + json.dumps({"text": "one more"}) + "\n")
    assert build_token_cache(changed, tokenizer, "pretrain", tmp_path).directory != cache.directory


def test_workers_write_the_same_cache_as_one_process(corpus, tmp_path):
    _, _, sft, tokenizer = corpus
    single = build_token_cache(sft, tokenizer, "conversation", tmp_path / "a", max_length=64)
    parallel = build_token_cache(sft, tokenizer, "conversation", tmp_path / "b", max_length=64, workers=2,
                                 parallel_min_bytes=0)
    for name in ("tokens.bin", "trained.bin", "reasoning.bin", "offsets.bin"):
        assert (single.directory / name).read_bytes() == (parallel.directory / name).read_bytes(), name


def test_cached_samples_equal_direct_encoding(corpus, tmp_path):
    _, _, sft, tokenizer = corpus
    cache = build_token_cache(sft, tokenizer, "conversation", tmp_path, max_length=64)
    first = json.loads(sft.read_text().splitlines()[0])["conversations"]
    conversation = Conversation(tuple(Turn(t["role"], t["content"], t.get("reasoning_content")) for t in first))
    encoded = encode_conversation(tokenizer, conversation, 64)
    ids, trained, reasoning = cache.sample(0)
    assert ids.tolist() == list(encoded.input_ids)
    assert trained.astype(bool).tolist() == [label != IGNORE_INDEX for label in encoded.labels]
    assert reasoning.astype(bool).tolist() == list(encoded.reasoning)
    def full_length(line: str) -> int:
        turns = json.loads(line)["conversations"]
        return len(encode_conversation(tokenizer, Conversation(tuple(
            Turn(t["role"], t["content"], t.get("reasoning_content")) for t in turns))).input_ids)

    assert cache.meta.truncated == sum(full_length(line) > 64 for line in sft.read_text().splitlines()) > 0


def test_a_bad_line_fails_with_file_and_line_or_is_counted(corpus, tmp_path):
    _, _, sft, tokenizer = corpus
    lines = sft.read_text().splitlines()
    lines[41] = '{"conversations": [{"role": "user", "content": "no answer"}]}'
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as error:
        build_token_cache(bad, tokenizer, "conversation", tmp_path / "c")
    assert error.value.line == 42 and "no assistant turn" in str(error.value)
    cache = build_token_cache(bad, tokenizer, "conversation", tmp_path / "c", skip_bad_lines=True)
    assert len(cache) == 199 and [line for line, _ in cache.meta.skipped_lines] == [42]


def test_packed_rows_hold_every_sample_once_with_its_labels(corpus, tmp_path):
    _, _, sft, tokenizer = corpus
    cache = build_token_cache(sft, tokenizer, "conversation", tmp_path, max_length=256)
    packed = sample_layout(cache, 256)
    padded = sample_layout(cache, 256, packed=False)
    covered = [i for first, end in packed.spans for i in range(first, end)]
    assert covered == list(range(len(cache)))
    assert packed.real_tokens == padded.real_tokens == cache.meta.tokens
    assert padded.rows == len(cache) and packed.rows < padded.rows
    assert packed.efficiency > 1.5 * padded.efficiency  # SFT-shaped lengths: packing removes most padding
    for row_index in (0, packed.rows - 1):
        row = sample_row(cache, packed, row_index, tokenizer.pad_id)
        first, end = packed.spans[row_index]
        expected = np.concatenate([cache.sample(i)[0] for i in range(first, end)]).astype(np.int64)
        trained = np.concatenate([cache.sample(i)[1] for i in range(first, end)]).astype(bool)
        assert row.real_tokens == len(expected) <= 256
        assert row.input_ids[:row.real_tokens].tolist() == expected.tolist()
        assert (row.input_ids[row.real_tokens:] == tokenizer.pad_id).all()
        assert (row.labels[row.real_tokens:] == IGNORE_INDEX).all()
        assert row.labels[:row.real_tokens].tolist() == np.where(trained, expected, IGNORE_INDEX).tolist()


def test_pretraining_rows_are_full_slices_of_the_stream(corpus, tmp_path):
    _, pretrain, _, tokenizer = corpus
    cache = build_token_cache(pretrain, tokenizer, "pretrain", tmp_path)
    layout = stream_layout(cache, 128)
    assert layout.rows == cache.meta.tokens // 128 and layout.efficiency == 1.0
    row = stream_row(cache, layout, 3)
    assert row.input_ids.tolist() == cache.tokens[3 * 128:4 * 128].tolist()
    assert (row.labels == row.input_ids).all()  # every pretraining token is trained
    assert int((row.input_ids == tokenizer.bos_id).sum()) >= 1  # documents start inside rows
