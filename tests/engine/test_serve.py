"""`serve`: the OpenAI-compatible server, checked with the official `openai` client (strict response
validation) and raw HTTP against a server started here on a trained tiny model. Greedy answers,
alone or batched with others, equal `generate` on the same prompt ids token for token; usage
counts are the prompt's and the answer's token counts; `stop` and `max_tokens` end answers with
the right `finish_reason`; every bad request gets its status and OpenAI's error shape; a client
that goes away frees its row. Tool calls and reasoning are checked on scripted token streams
(a tiny model does not write them), through the same HTTP layer."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from minimind_spec.model_files import find_model
from minimind_spec.engine.serve.model import ServedModel, chat_prompt, load_served

from .conftest import lm_eval_choice_task
from minimind_spec.engine.serve.scheduler import FinishEvent, Request, Sampling, Scheduler, TokenEvent

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from minimind_spec.engine.serve.api import create_app  # noqa: E402  (fastapi is needed)

NAME = "tiny"
QUESTIONS = [f"what is {a} plus {b}" for a, b in ((1, 2), (3, 4), (0, 0), (2, 2), (4, 1), (3, 3))]


class Server:
    """A uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def served(trained) -> ServedModel:
    return load_served(find_model(trained), NAME)


@pytest.fixture(scope="module")
def scheduler(served) -> Iterator[Scheduler]:
    running = Scheduler(served.model, served.decode, served.stop_ids, max_batch=4, max_length=96, max_queue=32).start()
    yield running
    running.close()


@pytest.fixture(scope="module")
def server(served, scheduler) -> Iterator[Server]:
    running = Server(create_app(served, scheduler))
    yield running
    running.close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, _strict_response_validation=True)


def solo(served: ServedModel, ids: list[int], max_new: int) -> list[int]:
    """Greedy tokens of `generate` on `ids` alone, up to (not including) the end token."""
    with torch.no_grad():
        out = served.model.generate(torch.tensor([ids]), max_new_tokens=max_new, temperature=0.0,
                                    eos_token_id=served.tokenizer.eos_id, pad_token_id=served.tokenizer.pad_id)
    new = out[0, len(ids):].tolist()
    return new[:new.index(served.tokenizer.eos_id)] if served.tokenizer.eos_id in new else new


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_chat_completion_equals_generate_with_exact_usage(served, client):
    reply = client.chat.completions.create(model=NAME, messages=user(QUESTIONS[0]), temperature=0, max_tokens=40, logprobs=True,
                                           top_logprobs=3)
    ids = chat_prompt(served.tokenizer, user(QUESTIONS[0]))
    expected = solo(served, ids, 40)
    choice = reply.choices[0]
    assert choice.message.content == served.tokenizer.decode(expected)
    assert reply.usage.prompt_tokens == len(ids) and reply.usage.completion_tokens == len(expected)
    assert reply.usage.total_tokens == len(ids) + len(expected)
    assert choice.finish_reason == ("stop" if len(expected) < 40 else "length")
    assert reply.object == "chat.completion" and reply.model == NAME and reply.id.startswith("chatcmpl-")
    entries = choice.logprobs.content
    assert [e.token for e in entries] == [served.tokenizer.decode([t]) for t in expected]
    with torch.no_grad():  # each logprob is the model's log-softmax at that position
        logits = served.model(torch.tensor([ids + expected])).logits[0]
    reference = torch.log_softmax(logits[len(ids) - 1:-1].float(), -1).gather(1, torch.tensor(expected)[:, None])[:, 0]
    assert torch.allclose(torch.tensor([e.logprob for e in entries]), reference, atol=1e-4)
    assert all(len(e.top_logprobs) == 3 and e.top_logprobs[0].logprob >= e.logprob - 1e-6 for e in entries)


def test_streaming_chunks_have_openai_s_shape_and_end_with_done(served, server, client):
    stream = client.chat.completions.create(model=NAME, messages=user(QUESTIONS[1]), temperature=0, max_tokens=30, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == NAME and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    ids = chat_prompt(served.tokenizer, user(QUESTIONS[1]))
    expected = solo(served, ids, 30)
    assert text == served.tokenizer.decode(expected)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop" if len(expected) < 30 else "length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={
            "model": NAME, "messages": user(QUESTIONS[1]), "stream": True, "temperature": 0, "max_tokens": 5}) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    first = json.loads(lines[0][6:])
    assert {"id", "object", "created", "model", "choices"} <= set(first) and first["choices"][0]["index"] == 0


def test_max_tokens_and_stop_end_the_answer_with_their_reason(served, client):
    ids = chat_prompt(served.tokenizer, user(QUESTIONS[3]))
    expected = served.tokenizer.decode(solo(served, ids, 40))
    short = client.chat.completions.create(model=NAME, messages=user(QUESTIONS[3]), temperature=0, max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    assert short.choices[0].message.content == served.tokenizer.decode(solo(served, ids, 2))
    middle = len(expected) // 2
    word = expected[middle - 1:middle + 1]  # a stop string in the middle of the answer, possibly across tokens
    assert len(word) == 2 and expected.index(word) > 0
    stopped = client.chat.completions.create(model=NAME, messages=user(QUESTIONS[3]), temperature=0, max_tokens=40,
                                             stop=[word, "never there"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == expected[:expected.index(word)]
    streamed = client.chat.completions.create(model=NAME, messages=user(QUESTIONS[3]), temperature=0, max_tokens=40,
                                              stop=word, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected[:expected.index(word)]


def test_concurrent_greedy_requests_equal_their_solo_runs_and_are_batched(served, scheduler, server):
    scheduler.peak_rows = 0

    def ask(question: str) -> str:
        reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
            "model": NAME, "messages": user(question), "temperature": 0, "max_tokens": 24})
        return reply.json()["choices"][0]["message"]["content"]

    def complete(text: str) -> str:  # continuations of pretraining text: long and varied
        reply = httpx.post(f"{server.url}/v1/completions", timeout=60, json={
            "model": NAME, "prompt": text, "temperature": 0, "max_tokens": 30})
        return reply.json()["choices"][0]["text"]

    texts = ["the cat sat", "a big red ball", "two plus three is", "the dog ran to", "four six", "on a mat"]
    with concurrent.futures.ThreadPoolExecutor(len(QUESTIONS) + len(texts)) as pool:
        answers = list(pool.map(ask, QUESTIONS))
        continued = list(pool.map(complete, texts))
    for question, got in zip(QUESTIONS, answers):
        assert got == served.tokenizer.decode(solo(served, chat_prompt(served.tokenizer, user(question)), 24)), question
    for text, got in zip(texts, continued):
        assert got == served.tokenizer.decode(solo(served, served.tokenizer.encode(text), 30)), text
    assert len(set(continued)) >= 3  # the answers differ: the batch did not mix them up
    assert scheduler.peak_rows >= 3  # decode steps ran several requests together (how many depends on arrival times)


def test_completions_score_a_prompt_with_echo_and_logprobs(served, server, client):
    ids = served.tokenizer.encode("the cat sat on a mat")
    # the first echoed token has no log-probability: null, as OpenAI's API and vLLM return it, which the client's own
    # types do not admit, so this one request goes through a client without strict validation
    loose = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    reply = loose.completions.create(model=NAME, prompt=ids, max_tokens=0, echo=True, logprobs=2, temperature=0)
    logprobs = reply.choices[0].logprobs
    assert logprobs.token_logprobs[0] is None and len(logprobs.token_logprobs) == len(ids)
    with torch.no_grad():
        logits = served.model(torch.tensor([ids])).logits[0]
    reference = torch.log_softmax(logits[:-1].float(), -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert torch.allclose(torch.tensor(logprobs.token_logprobs[1:]), reference, atol=1e-4)
    assert reply.choices[0].text == served.tokenizer.decode(ids) and reply.usage.completion_tokens == 0
    text = client.completions.create(model=NAME, prompt="the cat", max_tokens=5, temperature=0)
    assert text.choices[0].text == served.tokenizer.decode(solo(served, served.tokenizer.encode("the cat"), 5))
    assert text.object == "text_completion" and text.usage.prompt_tokens == len(served.tokenizer.encode("the cat"))


def test_n_and_seed_give_repeatable_samples(client):
    def sample(seed: int) -> list[str]:
        reply = client.chat.completions.create(model=NAME, messages=user("the"), temperature=1.5, max_tokens=12, n=3, seed=seed)
        assert [c.index for c in reply.choices] == [0, 1, 2]
        return [c.message.content for c in reply.choices]

    first = sample(7)
    assert sample(7) == first and len(set(first)) > 1 and sample(8) != first


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [NAME]
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["max_batch"] == 4


BAD = [
    ({"model": "gpt-4"}, "model"),
    ({"temperature": 5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 100}, "n"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": user("the " * 200)}, "messages"),  # longer than the 96-position context
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"top_logprobs": 50, "logprobs": True}, "top_logprobs"),
]


@pytest.mark.parametrize("change, param", BAD, ids=[p for _, p in BAD])
def test_every_bad_request_is_a_400_in_openai_s_shape(server, change, param):
    body = {"model": NAME, "messages": user("hi"), "max_tokens": 4, **change}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] is not None and error["param"].startswith(param)


def test_a_bad_request_raises_the_client_s_400_not_a_retry(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="nope", messages=user("hi"))
    assert raised.value.status_code == 400 and "nope" in raised.value.message


def test_a_wrong_key_is_401_and_a_full_queue_503(served):
    guarded = Scheduler(served.model, served.decode, served.stop_ids, max_batch=1, max_length=64, max_queue=0).start()
    server = Server(create_app(served, guarded, api_key="s3cret"))
    try:
        wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        right = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in right.models.list().data] == [NAME]
        with pytest.raises(openai.APIStatusError) as full:
            right.chat.completions.create(model=NAME, messages=user("hi"), max_tokens=2)
        assert full.value.status_code == 503 and full.value.body["type"] == "overloaded_error"
    finally:
        server.close()
        guarded.close()


def test_a_client_that_disconnects_frees_its_row(served, scheduler, server):
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={
            "model": NAME, "messages": user("the"), "stream": True, "temperature": 1.0, "max_tokens": 90,
            "stop": None}) as raw:
        for _ in zip(range(3), raw.iter_lines()):
            pass
    deadline = time.time() + 10
    while scheduler.load != (0, 0) and time.time() < deadline:
        time.sleep(0.05)
    assert scheduler.load == (0, 0)


class Scripted(Scheduler):
    """A scheduler that answers every request with fixed text, token by token (the HTTP layer's view)."""

    script = ""

    def submit(self, request: Request) -> None:
        ids = self.model_tokenizer.encode(self.script)
        for i, token in enumerate(ids):
            request.emit(TokenEvent(token, self.model_tokenizer.decode(ids[:i + 1])[len(self.model_tokenizer.decode(ids[:i])):],
                                    None, ()))
        request.emit(FinishEvent("stop", "", len(request.prompt), len(ids)))


@pytest.fixture(scope="module")
def scripted(served) -> Iterator[tuple[Server, type[Scripted]]]:
    fake = Scripted.__new__(Scripted)
    fake.model_tokenizer = served.tokenizer
    fake.max_length, fake.max_batch = 4096, 1  # the tools block alone is hundreds of tokens
    server = Server(create_app(served, fake))
    yield server, Scripted
    server.close()


def test_tool_calls_and_reasoning_come_out_in_openai_s_fields(scripted):
    server, script = scripted
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0, _strict_response_validation=True)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
                                                                                   "properties": {"city": {"type": "string"}}}}}]
    script.script = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    reply = client.chat.completions.create(model=NAME, messages=user("weather?"), tools=tools)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    chunks = list(client.chat.completions.create(model=NAME, messages=user("weather?"), tools=tools, stream=True))
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(calls) == 1 and calls[0][0].function.name == "get_weather"
    assert "tool_call" not in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    script.script = "<think>\nfour and four\n</think>\n\nIt is 8."
    reply = client.chat.completions.create(model=NAME, messages=user("4 + 4?"))
    message = reply.choices[0].message
    assert message.content == "It is 8." and message.model_extra["reasoning_content"] == "four and four"
    script.script = "two and two</think>\n\n4."  # thinking on: the prompt opened the block
    chunks = list(client.chat.completions.create(model=NAME, messages=user("2 + 2?"), stream=True,
                                                 extra_body={"chat_template_kwargs": {"enable_thinking": True}}))
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)
    assert reasoning == "two and two" and "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "4."


def test_the_terminal_chat_renders_and_answers_as_the_server_does(trained, served, client):
    import subprocess
    import sys

    script = "\n".join(["/system be brief", "what is 1 \\", "plus 2", "/reset", '"""', "what is 3", "plus 4", '"""', "/exit", ""])
    done = subprocess.run([sys.executable, "-m", "minimind_spec", "chat", str(trained), "--temperature", "0",
                           "--max-new-tokens", "20", "--history", "2"], input=script, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # the same messages through the server: the system message and the joined continued line, then after /reset
    # (which keeps the system message) the block of two lines
    first = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 1 \nplus 2"}]
    second = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is 3\nplus 4"}]
    for messages in (first, second):
        reply = client.chat.completions.create(model=NAME, messages=messages, temperature=0, max_tokens=20)
        assert reply.choices[0].message.content in out
        assert f"{reply.usage.completion_tokens} tokens, " in out
    assert "(conversation forgotten)" in out and "(system: be brief)" in out and "tokens/s" in out


def _chromium() -> str | None:
    import shutil

    return next((path for path in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome"))
                 if path), None)


def test_the_chat_page_streams_an_answer_in_a_real_browser(served, server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; the README says how)")
    import os

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 900, "height": 640})
        page.goto(server.url + "/")
        assert page.title().startswith(NAME)
        page.fill("#prompt", QUESTIONS[2])
        page.press("#prompt", "Enter")
        page.wait_for_selector(".turn.assistant[data-state=done]", timeout=30_000)
        shown = page.inner_text(".turn.assistant .answer")
        stats = page.inner_text(".turn.assistant .stats")
        page.screenshot(path=str(tmp_path / "page.png"))
        if os.environ.get("MINIMIND_SPEC_SCREENSHOT"):  # how the README's picture is made
            page.screenshot(path=os.environ["MINIMIND_SPEC_SCREENSHOT"])
        browser.close()
    ids = chat_prompt(served.tokenizer, user(QUESTIONS[2]))
    room = served.model.max_position_embeddings - len(ids) - 1  # the server cut the page's 256 at its context
    assert shown.strip() == served.tokenizer.decode(solo(served, ids, room)).strip()
    assert "tokens/s" in stats and (tmp_path / "page.png").stat().st_size > 10_000




def test_lm_eval_scores_through_the_completions_endpoint(trained, server, tmp_path, monkeypatch):
    """lm-eval's `local-completions` model (echo + logprobs on token ids) against the server, compared with
    `minimind-spec eval` on the same model and records (its question follows a BOS, which lm-eval's context
    gets from the task's text)."""
    pytest.importorskip("lm_eval", reason="lm_eval is not installed (pip install 'minimind-spec[eval]')")
    from typer.testing import CliRunner

    from lm_eval import simple_evaluate
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from lm_eval.tasks import TaskManager

    from minimind_spec.cli import app

    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    records = [{"question": "what is 1 plus", "choices": ["2", "3", "one"], "answer": 0},
               {"question": "the cat sat on a", "choices": ["mat", "dog ran to the big red ball"], "answer": 1},
               {"question": "two plus three is", "choices": ["five", "six"], "answer": 0}]
    data = tmp_path / "choices.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "served_choice.yaml").write_text(lm_eval_choice_task("served_choice", data))
    files = find_model(trained)
    lm = LocalCompletionsAPI(base_url=f"{server.url}/v1/completions", model=NAME, tokenizer=str(files.tokenizer_dir),
                             tokenizer_backend="huggingface", tokenized_requests=True, max_length=60, num_concurrent=1)
    evaluated = simple_evaluate(model=lm, tasks=["served_choice"], task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
                                bootstrap_iters=0, log_samples=True)
    samples = sorted(evaluated["samples"]["served_choice"], key=lambda sample: sample["doc_id"])
    done = CliRunner().invoke(app, ["eval", str(trained), "--data", str(data), "--json", "--no-progress"])
    assert done.exit_code == 0, done.output
    ours = json.loads(done.output)
    for record, sample in zip(ours["records"], samples, strict=True):
        assert record["loglikelihoods"] == pytest.approx([ll for ll, _ in sample["filtered_resps"]], rel=1e-4, abs=1e-4)
    results = evaluated["results"]["served_choice"]
    assert ours["metrics"]["acc"] == pytest.approx(results["acc,none"])
    assert ours["metrics"]["acc_norm"] == pytest.approx(results["acc_norm,none"])


def test_int8_serving_answers_as_int8_generate_does(served):
    """`serve --quant int8`: the rows decode through the int8 pack, as `generate(quant="int8")` does alone."""
    import queue

    int8 = Scheduler(served.model, served.decode, served.stop_ids, max_batch=4, max_length=64, quant="int8").start()
    try:
        texts = ["the cat sat", "a big red ball", "two plus three is"]
        inboxes = [queue.Queue() for _ in texts]
        for text, inbox in zip(texts, inboxes):
            int8.submit(Request(served.tokenizer.encode(text), Sampling(max_tokens=20), inbox.put))
        for text, inbox in zip(texts, inboxes):
            tokens = []
            while not isinstance(event := inbox.get(timeout=60), FinishEvent):
                tokens.append(event.token)
            ids = served.tokenizer.encode(text)
            with torch.no_grad():
                alone = served.model.generate(torch.tensor([ids]), max_new_tokens=20, temperature=0.0, quant="int8",
                                              eos_token_id=served.tokenizer.eos_id)[0, len(ids):].tolist()
            assert tokens == [t for t in alone if t != served.tokenizer.eos_id][:len(tokens)] and tokens, text
    finally:
        int8.close()
