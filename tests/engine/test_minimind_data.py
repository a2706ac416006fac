"""MiniMind's data formats, checked against MiniMind's own tokenizer and chat template.

Records in the exact shapes of jingyaogong/minimind's data (tools and tool calls as JSON strings or
lists, tool results, reasoning_content or an inline <think> block, preference pairs as
conversation lists) are read by our reader and encoded by our ChatML code; the reference is
transformers' `apply_chat_template` with MiniMind's tokenizer_config.json (and with ours), fed the
way MiniMind's SFT dataset feeds it, then tokenized: the ids must be equal, and the labels must
cover exactly the assistant spans. Then the generation prompt with thinking on and off, what
`load_tokenizer` reads from a chat template, and data files that are not clean UTF-8.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from minimind_spec.cli import app
from minimind_spec.engine.chat import prompt_ids
from minimind_spec.engine.data.chatml import IGNORE_INDEX, encode_conversation, render
from minimind_spec.engine.data.records import (
    Conversation, DataError, PreferencePair, ReadStats, Tool, ToolCall, Turn, parse_record, read_records,
)
from minimind_spec.engine.data.token_cache import build_token_cache
from minimind_spec.engine.data.tokenizer import ChatFormat, corpus_texts, load_tokenizer, train_tokenizer
from minimind_spec.errors import SpecError

MINIMIND = Path(__file__).resolve().parents[3] / "shared" / "minimind"  # MiniMind's tokenizer, beside the project
EMPTY_THINK = "<think>\n\n</think>\n\n"

TOOLS = [
    {"type": "function", "function": {"name": "calculate_math", "description": "计算数学表达式的结果",
                                      "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                                                     "required": ["expression"]}}},
    {"type": "function", "function": {"name": "get_current_time", "description": "获取当前日期和时间",
                                      "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}},
                                                     "required": []}}},
]
SYSTEM = {"role": "system", "content": "You are minimind, a small but useful language model."}
RECORDS = {  # name: a line of MiniMind SFT data
    "plain": {"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么可以帮你？"}]},
    "multi_turn": {"conversations": [SYSTEM, {"role": "user", "content": "What is 2 + 3?"},
                                     {"role": "assistant", "content": "It is 5."},
                                     {"role": "user", "content": "And 4 + 4?"}, {"role": "assistant", "content": "8."}]},
    "reasoning_content": {"conversations": [{"role": "user", "content": "What is 2 + 3?"},
                                            {"role": "assistant", "content": "It is 5.", "reasoning_content": "2 + 3 = 5"}]},
    "inline_think": {"conversations": [{"role": "user", "content": "What is 2 + 3?"},
                                       {"role": "assistant", "content": "<think>\n2 + 3 = 5\n</think>\n\nIt is 5."}]},
    "empty_reasoning_keeps_inline_tags": {"conversations": [  # a reasoning_content string stops the template's split
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>x</think>Hello", "reasoning_content": ""}]},
    "tools_as_strings": {"conversations": [  # the shape of MiniMind's README and sft_t2t data
        {"role": "system", "content": "# Tools ...", "tools": json.dumps(TOOLS, ensure_ascii=False)},
        {"role": "user", "content": "帮我算一下 256 乘以 37 等于多少"},
        {"role": "assistant", "content": "",
         "tool_calls": json.dumps([{"name": "calculate_math", "arguments": {"expression": "256 * 37"}}], ensure_ascii=False)},
        {"role": "tool", "content": "{\"result\":\"9472\"}"},
        {"role": "assistant", "content": "256 乘以 37 等于 9472。"}]},
    "tools_as_lists": {"conversations": [  # OpenAI-style calls, arguments as a string and as an object, two results
        {"role": "system", "content": "Be brief.", "tools": TOOLS},
        {"role": "user", "content": "What time is it, and what is 2**10?"},
        {"role": "assistant", "content": "Let me check both.", "reasoning_content": "Two tools are needed.",
         "tool_calls": [{"id": "call_0", "type": "function",
                         "function": {"name": "get_current_time", "arguments": "{\"timezone\": \"Asia/Shanghai\"}"}},
                        {"function": {"name": "calculate_math", "arguments": {"expression": "2**10"}}}]},
        {"role": "tool", "content": "{\"datetime\": \"2026-03-15 17:18:22\"}", "tool_call_id": "call_0"},
        {"role": "tool", "content": "{\"result\": \"1024\"}"},
        {"role": "assistant", "content": "It is 17:18, and 2**10 is 1024."}]},
    "null_fields": {"conversations": [  # as Hugging Face datasets writes MiniMind's features back out: absent is null
        {"role": "system", "content": "Tools below.", "reasoning_content": None, "tools": json.dumps(TOOLS[:1]), "tool_calls": None},
        {"role": "user", "content": "1+1?", "reasoning_content": None, "tools": None, "tool_calls": None},
        {"role": "assistant", "content": None, "reasoning_content": None, "tools": None,
         "tool_calls": "[{\"name\": \"calculate_math\", \"arguments\": {\"expression\": \"1+1\"}}]"},
        {"role": "tool", "content": "{\"result\": \"2\"}", "reasoning_content": None, "tools": None, "tool_calls": None},
        {"role": "assistant", "content": "<think>\nThe tool said 2.\n</think>\n\n2", "reasoning_content": None, "tools": None,
         "tool_calls": None}]},
}
PAIR = {"chosen": [{"content": "Q", "role": "user"}, {"content": "good answer", "role": "assistant"}],
        "rejected": [{"content": "Q", "role": "user"}, {"content": "<think>\nhmm\n</think>\n\nbad answer", "role": "assistant"}]}


def template_inputs(turns: list[dict]) -> tuple[list[dict], list | None]:
    """Messages and tools as MiniMind's SFT dataset hands them to apply_chat_template: the tools of the system
    turn and each turn's tool_calls parsed when they are JSON strings."""
    messages, tools = [], None
    for turn in turns:
        message = dict(turn)
        if message["role"] == "system" and message.get("tools"):
            tools = json.loads(message["tools"]) if isinstance(message["tools"], str) else message["tools"]
        if isinstance(message.get("tool_calls"), str):
            message["tool_calls"] = json.loads(message["tool_calls"])
        messages.append(message)
    return messages, tools


@pytest.fixture(scope="module")
def directories(tmp_path_factory):
    """{"minimind": MiniMind's tokenizer directory (copied), "ours": one trained by train_tokenizer}."""
    if not (MINIMIND / "tokenizer_config.json").is_file():
        pytest.skip(f"MiniMind's tokenizer is not at {MINIMIND}")
    root = tmp_path_factory.mktemp("minimind_tokenizers")
    shutil.copytree(MINIMIND, root / "minimind", ignore=shutil.ignore_patterns("LICENSE", "README.md"))
    corpus = root / "corpus.jsonl"
    lines = [json.dumps(record, ensure_ascii=False) for record in RECORDS.values()] * 5
    corpus.write_text("\n".join(lines + [json.dumps({"text": f"item {i} costs {i * 7} coins"}) for i in range(200)]) + "\n")
    train_tokenizer([corpus], 420, root / "ours", min_frequency=1)
    return {"minimind": root / "minimind", "ours": root / "ours"}


@pytest.fixture(scope="module", params=["minimind", "ours"])
def pair(request, directories):
    """(our ChatTokenizer, transformers' AutoTokenizer) of one tokenizer directory."""
    transformers = pytest.importorskip("transformers")
    directory = directories[request.param]
    return load_tokenizer(directory), transformers.AutoTokenizer.from_pretrained(str(directory))


@pytest.fixture(scope="module")
def conversations(tmp_path_factory) -> dict[str, Conversation]:
    """RECORDS as our reader reads them from a JSONL file."""
    path = tmp_path_factory.mktemp("records") / "sft.jsonl"
    path.write_text("\n".join(json.dumps(record, ensure_ascii=False) for record in RECORDS.values()) + "\n", encoding="utf-8")
    read = [record for _, record in read_records(path, "conversation")]
    assert all(isinstance(record, Conversation) for record in read)
    return dict(zip(RECORDS, read))


def assistant_spans(tokenizer, ids) -> list[bool]:
    """The trained positions, found independently of our encoder: after each `<|im_start|>assistant\\n` up to
    and including its `<|im_end|>`."""
    header = tokenizer.encode("<|im_start|>assistant\n")
    trained = [False] * len(ids)
    for start in (i + len(header) for i in range(len(ids)) if list(ids[i:i + len(header)]) == header):
        for i in range(start, ids.index(tokenizer.eos_id, start) + 1):
            trained[i] = True
    return trained


@pytest.mark.parametrize("name", list(RECORDS))
def test_ids_equal_the_chat_template_s_and_labels_cover_the_assistant_spans(pair, conversations, name):
    tokenizer, hf = pair
    messages, tools = template_inputs(RECORDS[name]["conversations"])
    text = hf.apply_chat_template(messages, tools=tools, tokenize=False)
    encoded = encode_conversation(tokenizer, conversations[name])
    assert render(conversations[name], chat_format=tokenizer.chat_format) == text
    assert list(encoded.input_ids) == hf(text, add_special_tokens=False)["input_ids"]
    ids, labels = list(encoded.input_ids), encoded.labels
    trained = assistant_spans(tokenizer, ids)
    assert sum(trained) > 0 and [label != IGNORE_INDEX for label in labels] == trained
    assert all(label == token for label, token in zip(labels, ids) if label != IGNORE_INDEX)
    untrained = tokenizer.decode(t for t, label in zip(ids, labels) if label == IGNORE_INDEX)
    trained_text = tokenizer.decode(t for t, label in zip(ids, labels) if label != IGNORE_INDEX)
    calls = [f'<tool_call>\n{{"name": "{call.name}", "arguments": {call.arguments}}}\n</tool_call>'
             for turn in conversations[name].turns for call in turn.tool_calls]
    assert all(call in trained_text and call not in untrained for call in calls)  # tool calls are trained,
    assert "<think>" not in untrained  # think blocks too,
    assert "<tool_response>" not in trained_text and "# Tools" not in trained_text  # tool results and the tools block not


@pytest.mark.parametrize("name", list(RECORDS))
def test_our_template_writes_minimind_s_text_less_the_empty_think_block(directories, name):
    transformers = pytest.importorskip("transformers")
    minimind, ours = (transformers.AutoTokenizer.from_pretrained(str(directories[key])) for key in ("minimind", "ours"))
    messages, tools = template_inputs(RECORDS[name]["conversations"])
    theirs = minimind.apply_chat_template(messages, tools=tools, tokenize=False)
    assert ours.apply_chat_template(messages, tools=tools, tokenize=False) == theirs.replace(EMPTY_THINK, "")
    for thinking in (False, True):
        prompt = {"add_generation_prompt": True, "open_thinking": thinking, "tools": tools, "tokenize": False}
        assert ours.apply_chat_template(messages[:2], **prompt) == minimind.apply_chat_template(messages[:2], **prompt) \
            .replace(EMPTY_THINK, "")


@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("name", ["plain", "multi_turn", "tools_as_lists"])
def test_generation_prompt_with_thinking_on_and_off(pair, conversations, name, thinking):
    tokenizer, hf = pair
    messages, tools = template_inputs(RECORDS[name]["conversations"][:-1])  # the last answer left for the model
    text = hf.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True, open_thinking=thinking)
    conversation = conversations[name]
    head = Conversation(conversation.turns[:-1], conversation.tools)
    assert render(head, add_generation_prompt=True, chat_format=tokenizer.chat_format, thinking=thinking) == text
    question = [{"role": "user", "content": "你是谁？"}]
    expected = hf.apply_chat_template(question, tokenize=False, add_generation_prompt=True, open_thinking=thinking)
    assert prompt_ids(tokenizer, "你是谁？", chat=True, thinking=thinking) == hf(expected, add_special_tokens=False)["input_ids"]
    assert expected.endswith("<think>\n" if thinking else EMPTY_THINK if tokenizer.chat_format.empty_think else "assistant\n")


def test_the_chat_format_is_read_from_the_template(directories, tmp_path):
    assert load_tokenizer(directories["minimind"]).chat_format == ChatFormat(empty_think=True)
    assert load_tokenizer(directories["ours"]).chat_format == ChatFormat(empty_think=False)
    bare = tmp_path / "bare"  # tokenizer.json alone: our layout
    bare.mkdir()
    shutil.copy(directories["minimind"] / "tokenizer.json", bare)
    assert load_tokenizer(bare).chat_format.empty_think is False
    template = json.loads((directories["minimind"] / "tokenizer_config.json").read_text())["chat_template"]
    (bare / "chat_template.jinja").write_text(template)  # where newer transformers versions save it
    assert load_tokenizer(bare).chat_format.empty_think is True
    (bare / "chat_template.jinja").unlink()
    (bare / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ raise_exception('no') }}"}))
    assert load_tokenizer(bare).chat_format.empty_think is False  # a template that cannot render the probe reads as ours
    (bare / "tokenizer_config.json").write_bytes(b'{"chat_template": "\xff"}')
    with pytest.raises(SpecError, match="tokenizer_config.json cannot be read"):
        load_tokenizer(bare)


def test_records_are_typed(conversations):
    tools = conversations["tools_as_lists"]
    assert tools.tools == tuple(Tool(json.dumps(tool, ensure_ascii=False)) for tool in TOOLS)
    assert tools.turns[2] == Turn("assistant", "Let me check both.", "Two tools are needed.", (
        ToolCall("get_current_time", '{"timezone": "Asia/Shanghai"}'), ToolCall("calculate_math", '{"expression": "2**10"}')))
    assert [turn.role for turn in tools.turns] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    strings = conversations["tools_as_strings"]
    assert strings.tools == conversations["tools_as_lists"].tools
    assert strings.turns[2] == Turn("assistant", "", None, (ToolCall("calculate_math", '{"expression": "256 * 37"}'),))
    assert conversations["null_fields"].turns[2].content == "" and conversations["null_fields"].turns[4].reasoning == "The tool said 2."
    assert conversations["empty_reasoning_keeps_inline_tags"].turns[1] == Turn("assistant", "<think>x</think>Hello")


def test_inline_reasoning_is_reasoning_content(pair, conversations):
    tokenizer, _ = pair
    inline, explicit = conversations["inline_think"], conversations["reasoning_content"]
    assert inline == explicit and inline.turns[1] == Turn("assistant", "It is 5.", "2 + 3 = 5")
    assert encode_conversation(tokenizer, inline) == encode_conversation(tokenizer, explicit)
    encoded = encode_conversation(tokenizer, inline)
    assert tokenizer.decode(t for t, r in zip(encoded.input_ids, encoded.reasoning) if r) == "<think>\n2 + 3 = 5\n</think>"
    # the template's own split: text after the last <think> before the first </think>; content after the last </think>
    odd = parse_record({"conversations": [{"role": "user", "content": "q"}, {
        "role": "assistant", "content": "pre<think>\n\na<think>b\n\n</think>\n\nmid</think>\n\nend"}]}, "conversation")
    assert isinstance(odd, Conversation) and odd.turns[1] == Turn("assistant", "end", "b")


def test_the_empty_think_block_is_trained_but_not_reasoning(directories, conversations):
    tokenizer = load_tokenizer(directories["minimind"])
    encoded = encode_conversation(tokenizer, conversations["plain"])
    trained = tokenizer.decode(t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX)
    assert trained == f"{EMPTY_THINK}你好！有什么可以帮你？<|im_end|>" and not any(encoded.reasoning)


def test_preference_pairs_render_as_the_template_does(pair, tmp_path):
    tokenizer, hf = pair
    path = tmp_path / "dpo.jsonl"
    path.write_text(json.dumps(PAIR) + "\n")
    (_, record), = read_records(path, "preference")
    assert isinstance(record, PreferencePair)
    cache = build_token_cache(path, tokenizer, "preference", tmp_path / "cache")
    for index, (side, messages) in enumerate([(record.chosen, PAIR["chosen"]), (record.rejected, PAIR["rejected"])]):
        assert isinstance(side, Conversation)
        text = hf.apply_chat_template(messages, tokenize=False)
        encoded = encode_conversation(tokenizer, side)
        assert list(encoded.input_ids) == hf(text, add_special_tokens=False)["input_ids"]
        ids, trained, _ = cache.sample(index)
        assert ids.tolist() == list(encoded.input_ids)
        assert trained.astype(bool).tolist() == assistant_spans(tokenizer, list(encoded.input_ids))


@pytest.mark.parametrize(("turns", "message"), [
    ([{"role": "user", "content": "q", "tools": TOOLS}, {"role": "assistant", "content": "a"}], "only a system turn offers tools"),
    ([{"role": "system", "content": "s", "tools": "[not json"}, {"role": "assistant", "content": "a"}], "tools is a string but not JSON"),
    ([{"role": "system", "content": "s", "tools": {"name": "f"}}, {"role": "assistant", "content": "a"}], "must be a list"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [{"arguments": {}}]}],
     'tool_calls[0] must be {"name"'),
    ([{"role": "user", "content": "q", "tool_calls": [{"name": "f", "arguments": {}}]}, {"role": "assistant", "content": "a"}],
     "only an assistant turn makes tool calls"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": None}], "conversations[1].content must be a string"),
])
def test_malformed_tool_fields_say_what_is_wrong(turns, message):
    with pytest.raises(ValueError) as error:
        parse_record({"conversations": turns}, "conversation")
    assert message in str(error.value)


# Data files that are not clean UTF-8: a byte-order mark at the start is accepted; a byte that is not UTF-8 is a bad
# line, named with file, line and byte column (1-based, in bytes of the line as it is in the file).

GOOD = json.dumps({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}).encode()
BAD = b'{"conversations": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "a"}]}'  # Latin-1
BOM = b"\xef\xbb\xbf"


def test_a_byte_order_mark_is_accepted_and_a_non_utf8_byte_is_a_bad_line(tmp_path):
    clean = tmp_path / "bom.jsonl"
    clean.write_bytes(BOM + GOOD + b"\n" + GOOD + b"\n")
    assert [n for n, _ in read_records(clean, "conversation")] == [1, 2]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(BOM + GOOD + b"\n" + BAD + b"\n" + GOOD + b"\n")
    column = BAD.index(b"\xe9") + 1
    with pytest.raises(DataError) as error:
        list(read_records(bad, "conversation"))
    assert str(error.value) == f"{bad}:2: not UTF-8 (byte 0xe9 at column {column})" and error.value.line == 2
    stats = ReadStats()
    assert [n for n, _ in read_records(bad, "conversation", skip_bad_lines=True, stats=stats)] == [1, 3]
    assert stats.skipped_lines == [(2, f"not UTF-8 (byte 0xe9 at column {column})")]
    first = tmp_path / "first.jsonl"  # on line 1 the column counts the byte-order mark's 3 bytes
    first.write_bytes(BOM + BAD + b"\n")
    with pytest.raises(DataError, match=rf"first.jsonl:1: not UTF-8 \(byte 0xe9 at column {column + 3}\)"):
        list(read_records(first, "conversation"))


def test_the_token_cache_and_the_tokenizer_corpus_read_the_same_way(directories, tmp_path):
    tokenizer = load_tokenizer(directories["ours"])
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(BOM + GOOD + b"\n" + BAD + b"\n" + GOOD + b"\n")
    column = BAD.index(b"\xe9") + 1
    with pytest.raises(DataError, match=rf"bad.jsonl:2: not UTF-8 \(byte 0xe9 at column {column}\)"):
        build_token_cache(bad, tokenizer, "conversation", tmp_path / "cache")
    cache = build_token_cache(bad, tokenizer, "conversation", tmp_path / "cache", skip_bad_lines=True)
    assert len(cache) == 2 and cache.meta.skipped_lines == ((2, f"not UTF-8 (byte 0xe9 at column {column})"),)
    text = tmp_path / "corpus.txt"
    text.write_bytes(BOM + b"first line\nsecond line\n")
    assert list(corpus_texts([text])) == ["first line\n", "second line\n"]
    jsonl = tmp_path / "pretrain.jsonl"
    jsonl.write_bytes(BOM + b'{"text": "hello"}\n')
    assert list(corpus_texts([jsonl])) == ["hello"]  # read as JSON, not left out as a line that is not
    with pytest.raises(DataError, match=rf"bad.jsonl:2: not UTF-8 \(byte 0xe9 at column {column}\)"):
        list(corpus_texts([bad]))


def test_the_cli_reports_a_non_utf8_line_without_a_traceback(workspace, tmp_path):
    lines = (workspace / "sft.jsonl").read_bytes().splitlines()
    data = tmp_path / "sft.jsonl"
    data.write_bytes(BOM + b"\n".join([*lines[:5], BAD, *lines[5:20]]) + b"\n")
    command = ["train", str(workspace / "tiny.json"), "--stage", "sft", "--sft-data", str(data), "--tokenizer",
               str(workspace / "tok"), "--out", str(tmp_path / "run"), "--max-steps", "1", "--no-progress", "--seq-len", "24"]
    failed = CliRunner().invoke(app, command)
    column = BAD.index(b"\xe9") + 1
    assert failed.exit_code == 2 and f"sft.jsonl:6: not UTF-8 (byte 0xe9 at column {column})" in failed.output
    assert "Traceback" not in failed.output
    skipped = CliRunner().invoke(app, [*command, "--skip-bad-lines"])
    assert skipped.exit_code == 0, skipped.output
    assert "skipped 1 malformed line" in skipped.output and "line 6: not UTF-8" in skipped.output
    corpus = CliRunner().invoke(app, ["tokenizer", "train", str(data), "--vocab-size", "300", "--out", str(tmp_path / "tok")])
    assert corpus.exit_code == 2 and "not UTF-8" in corpus.output and "Traceback" not in corpus.output
