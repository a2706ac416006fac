"""What a client sees of generated text, whatever the token boundaries: stop strings are honoured
across tokens and never sent, reasoning splits at `</think>` as MiniMind's template splits it,
and tool-call blocks are parsed out. Every property is checked for random cuts of the text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from minimind_spec.engine.data.records import split_inline_reasoning
from minimind_spec.engine.serve.text import ReasoningSplit, TextStream, ToolCallSplit, parse_tool_calls

TEXTS = ["It is 8. Done.", "plus 4 plus 4 plus 4", "héllo wörld ✓ 你好", "<think>\nsteps\n</think>\n\nanswer",
         "a</think>b", "no reasoning here", "\n\nx"]


def cuts(text: str):
    return st.lists(st.integers(0, len(text)), max_size=8).map(lambda points: sorted(set(points)))


def pieces(text: str, points: list[int]) -> list[str]:
    edges = [0, *points, len(text)]
    return [text[a:b] for a, b in zip(edges, edges[1:])]


class Chars:
    """A stand-in tokenizer: each token is one piece of the text."""

    def __init__(self, parts: list[str]) -> None:
        self.parts = parts

    def decode(self, ids: list[int]) -> str:
        return "".join(self.parts[i] for i in ids)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(TEXTS), st.data())
def test_stop_strings_cut_the_text_wherever_the_tokens_split(text, data):
    parts = pieces(text, data.draw(cuts(text)))
    stop = data.draw(st.sampled_from([text[i:i + n] for n in (1, 2, 3) for i in range(len(text) - n + 1)] or ["zz"]))
    stream = TextStream(Chars(parts).decode, (stop, "never"))
    sent, stopped = "", False
    for token in range(len(parts)):
        delta, stopped = stream.push(token)
        sent += delta
        if stopped:
            break
    if not stopped:
        sent += stream.flush()
    expected = text[:text.index(stop)] if stop in text else text
    assert sent == expected and stop not in sent


def test_held_back_text_waits_for_a_possible_stop_and_incomplete_characters():
    stream = TextStream(Chars(["ab", "c", "Xd"]).decode, ("cX",))
    assert stream.push(0) == ("ab", False)
    assert stream.push(1) == ("", False)  # "c" may begin "cX"
    assert stream.push(2) == ("", True)  # it did: nothing after "ab" is sent
    partial = TextStream(Chars(["a", "\ufffd", "é"]).decode)
    assert partial.push(0) == ("a", False) and partial.push(1) == ("", False)  # half a character is not sent


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(TEXTS), st.booleans(), st.data())
def test_reasoning_splits_as_the_template_does(text, thinking, data):
    parts = pieces(text, data.draw(cuts(text)))
    split = ReasoningSplit(thinking)
    reasoning = content = ""
    for i, part in enumerate(parts):
        r, c = split.push(part, final=i == len(parts) - 1)
        reasoning, content = reasoning + r, content + c
    if not parts:
        r, c = split.push("", final=True)
        reasoning, content = reasoning + r, content + c
    full = ("<think>\n" if thinking else "") + text
    if "</think>" in full and (thinking or full.lstrip().startswith("<think>")):
        assert (reasoning, content) == split_inline_reasoning(full)
    elif thinking:  # the block never closed: all of it is reasoning
        assert (reasoning, content) == (text.lstrip("\n"), "")
    else:
        assert (reasoning, content) == ("", text)


def test_tool_calls_are_parsed_out_and_malformed_blocks_stay_text():
    text = 'Sure.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>\nnot json\n</tool_call>'
    rest, calls = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in calls] == [("f", '{"x": 1}')]
    assert rest.startswith("Sure.") and "not json" in rest
    split = ToolCallSplit()
    streamed = "".join(split.push(piece) for piece in ["Sure.\n<tool", "_call>\n{\"name\": \"f\", \"arguments\": \"{}\"}", "\n</tool_call>"])
    tail, found = split.finish()
    assert streamed == "Sure.\n" and tail == "" and found[0].name == "f" and found[0].arguments == "{}"
