"""Data in MiniMind's formats: the trained tokenizer's layout (and transformers loading it with
the same chat template), SFT labels on exact token positions, pretraining documents, and the
JSONL reader's errors with file and line."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from typer.testing import CliRunner

from minimind_spec.cli import app
from minimind_spec.engine.data.chatml import IGNORE_INDEX, encode_conversation, encode_document, render
from minimind_spec.engine.data.records import (
    Conversation, DataError, Document, PreferencePair, ReadStats, Turn, read_records,
)
from minimind_spec.engine.data.tokenizer import CHAT_TEMPLATE, load_tokenizer, train_tokenizer

SENTENCES = [
    "The cat sat on the mat.", "Two plus three is five.", "A small model trains fast on a laptop.",
    "What is the capital of France? Paris is the capital.", "Think step by step, then answer.",
]
CONVERSATION = Conversation((
    Turn("system", "You are a helpful assistant."),
    Turn("user", "What is 2 + 3?"),
    Turn("assistant", "It is 5.", reasoning="2 + 3 = 5"),
    Turn("user", "And 4 + 4?"),
    Turn("assistant", "8."),
))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    pretrain = root / "pretrain.jsonl"
    varied = [f"item {i} costs {i * 7} coins and weighs {i % 13} grams" for i in range(400)]
    pretrain.write_text("".join(json.dumps({"text": s}) + "\n" for s in SENTENCES * 20 + varied), encoding="utf-8")
    sft = root / "sft.jsonl"
    turns = [{"role": t.role, "content": t.content, **({"reasoning_content": t.reasoning} if t.reasoning else {})}
             for t in CONVERSATION.turns]
    sft.write_text(json.dumps({"conversations": turns}) + "\n", encoding="utf-8")
    return train_tokenizer([pretrain, sft], 400, root / "out", min_frequency=1)


def test_special_tokens_have_minimind_ids(tokenizer):
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
    assert tokenizer.think_open == (3,) and tokenizer.think_close == (4,)
    assert tokenizer.vocab_size == 400
    assert tokenizer.decode(tokenizer.encode("The cat sat.")) == "The cat sat."


def test_transformers_loads_it_with_the_same_chat_template(tokenizer):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tokenizer.path.parent))
    messages = [{"role": t.role, "content": t.content, **({"reasoning_content": t.reasoning} if t.reasoning else {})}
                for t in CONVERSATION.turns]
    assert hf.apply_chat_template(messages, tokenize=False) == render(CONVERSATION)
    assert hf.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True) == \
        render(Conversation(CONVERSATION.turns[:2]), add_generation_prompt=True)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 0)
    text = render(CONVERSATION)
    assert hf(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)


def test_chatml_text_is_minimind_s():
    assert render(CONVERSATION) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n2 + 3 = 5\n</think>\n\nIt is 5.<|im_end|>\n"
        "<|im_start|>user\nAnd 4 + 4?<|im_end|>\n"
        "<|im_start|>assistant\n8.<|im_end|>\n"
    )


def test_sft_labels_cover_exactly_the_assistant_spans(tokenizer):
    encoded = encode_conversation(tokenizer, CONVERSATION)
    ids, labels = encoded.input_ids, encoded.labels
    assert list(ids) == tokenizer.encode(render(CONVERSATION))  # pieces tokenize as the whole text does
    # the trained spans, found independently: after each "<|im_start|>assistant\n" up to and including its <|im_end|>
    header = tokenizer.encode("<|im_start|>assistant\n")
    expected = [False] * len(ids)
    starts = [i + len(header) for i in range(len(ids)) if list(ids[i:i + len(header)]) == header]
    assert len(starts) == 2
    for start in starts:
        end = ids.index(tokenizer.eos_id, start)
        for i in range(start, end + 1):
            expected[i] = True
    assert [label != IGNORE_INDEX for label in labels] == expected
    assert all(label == token for label, token in zip(labels, ids) if label != IGNORE_INDEX)
    spans = tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert spans == "<think>\n2 + 3 = 5\n</think>\n\nIt is 5.<|im_end|>8.<|im_end|>"


def test_reasoning_tokens_are_marked(tokenizer):
    encoded = encode_conversation(tokenizer, CONVERSATION)
    marked = [t for t, r in zip(encoded.input_ids, encoded.reasoning) if r]
    assert tokenizer.decode(marked) == "<think>\n2 + 3 = 5\n</think>"


def test_pretrain_documents_and_truncation(tokenizer):
    encoded = encode_document(tokenizer, "The cat sat on the mat.")
    assert encoded.input_ids[0] == 1 and encoded.input_ids[-1] == 2 and encoded.labels == encoded.input_ids
    assert not encoded.truncated
    short = encode_conversation(tokenizer, CONVERSATION, max_length=10)
    assert short.truncated and len(short.input_ids) == len(short.labels) == 10


def test_reasoning_tags_are_found_by_text_when_they_are_not_single_tokens(tmp_path):
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(SENTENCES * 5, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    raw.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)
    assert len(loaded.think_open) > 1 and loaded.decode(loaded.think_open) == "<think>"


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_records_of_each_format(tmp_path):
    pairs = write_lines(tmp_path / "dpo.jsonl", [
        json.dumps({"chosen": "good", "rejected": "bad"}),
        json.dumps({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                    "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}),
    ])
    records = [record for _, record in read_records(pairs, "preference")]
    assert records[0] == PreferencePair("good", "bad")
    assert isinstance(records[1].chosen, Conversation) and records[1].rejected.turns[1].content == "b"
    docs = write_lines(tmp_path / "pre.jsonl", [json.dumps({"text": "hello"}), "", json.dumps({"text": "world"})])
    assert [(n, r) for n, r in read_records(docs, "pretrain")] == [(1, Document("hello")), (3, Document("world"))]


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "not JSON"),
    (json.dumps({"conversations": [{"role": "user", "content": "hi"}]}), "no assistant turn"),
    (json.dumps({"conversations": [{"role": "bot", "content": "hi"}]}), "conversations[0].role"),
    (json.dumps(["a list"]), "JSON object"),
])
def test_a_bad_line_names_file_and_line(tmp_path, line, message):
    good = json.dumps({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    path = write_lines(tmp_path / "sft.jsonl", [good, line, good])
    with pytest.raises(DataError) as error:
        list(read_records(path, "conversation"))
    assert error.value.line == 2 and str(error.value).startswith(f"{path}:2: ") and message in str(error.value)
    stats = ReadStats()
    assert [n for n, _ in read_records(path, "conversation", skip_bad_lines=True, stats=stats)] == [1, 3]
    assert stats.records == 2 and [n for n, _ in stats.skipped_lines] == [2]


def test_an_empty_file_is_an_error_not_a_crash(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty"):
        list(read_records(tmp_path / "empty.jsonl", "pretrain"))


def test_tokenizer_train_command(tmp_path):
    corpus = write_lines(tmp_path / "corpus.txt", SENTENCES * 10)
    result = CliRunner().invoke(app, ["tokenizer", "train", str(corpus), "--vocab-size", "300", "--out", str(tmp_path / "tok")])
    assert result.exit_code == 0, result.output
    assert load_tokenizer(tmp_path / "tok").vocab_size == 300
    bad = CliRunner().invoke(app, ["tokenizer", "train", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "t2")])
    assert bad.exit_code == 2 and "not found" in bad.output


def test_the_template_constant_is_what_the_config_holds(tokenizer):
    config = json.loads((tokenizer.path.parent / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE and config["pad_token"] == "<|endoftext|>"
