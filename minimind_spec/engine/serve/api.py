"""The OpenAI-compatible HTTP API over the scheduler (FastAPI).

- `POST /v1/chat/completions`: messages (system/user/assistant/tool, rendered with the model's own
  chat template), `stream` (server-sent `chat.completion.chunk` events ending `data: [DONE]`,
  `stream_options.include_usage` adding a last chunk with `usage` and no choices), `max_tokens` /
  `max_completion_tokens`, `stop`, `temperature`, `top_p`, `top_k`, `seed`, `n`, `logprobs` /
  `top_logprobs`; `reasoning_content` split off at `</think>` with the thinking switch
  `chat_template_kwargs.enable_thinking`; with `tools`, `<tool_call>` blocks become `tool_calls`
  and `finish_reason` "tool_calls".
- `POST /v1/completions`: `prompt` as text or token ids (or a list of either), `echo`, `logprobs`
  (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`), `max_tokens` 0 to score only.
- `GET /v1/models`, `GET /health`, and `GET /` the chat page.

Every error has OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 for a bad
request (an unknown model, a prompt longer than the context, sampling values out of range, a
malformed message), 401 for a wrong key when the server has one, 503 when the queue is full;
never a 500 for bad input. A client that disconnects cancels its requests and frees their rows.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .model import ServedModel, chat_prompt
from .scheduler import Event, FailEvent, FinishEvent, QueueFull, Request, Sampling, Scheduler, TokenEvent
from .text import ReasoningSplit, ToolCallSplit

MAX_N = 16
MAX_STOPS = 4


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


def error_body(status: int, message: str, kind: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


class StreamOptions(BaseModel):
    include_usage: bool = False


class Common(BaseModel):
    """What both completion endpoints take; unknown fields are ignored, as OpenAI's clients send extras."""

    model_config = ConfigDict(extra="ignore")
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)  # an extra, as vLLM takes it; 0 and -1 keep every token
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None


class ChatRequest(Common):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None  # "none" turns tool-call parsing off; any other value leaves it to the model
    chat_template_kwargs: dict[str, Any] | None = None


class CompletionRequest(Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)


def _stops(value: str | list[str] | None) -> tuple[str, ...]:
    stops = (value,) if isinstance(value, str) else tuple(value or ())
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop takes at most {MAX_STOPS} strings; got {len(stops)}", param="stop")
    return stops


def _usage(finishes: list[FinishEvent]) -> dict[str, int]:
    prompt = finishes[0].prompt_tokens if finishes else 0
    completion = sum(f.completion_tokens for f in finishes)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


class Service:
    """The endpoints' work: requests in, scheduler events out, OpenAI's shapes back."""

    def __init__(self, served: ServedModel, scheduler: Scheduler) -> None:
        self.served = served
        self.scheduler = scheduler

    def token_text(self, token: int) -> str:
        return self.served.tokenizer.decode([token])

    def check_model(self, name: str) -> None:
        if name != self.served.name:
            raise ApiError(400, f"the model {name!r} does not exist here; this server serves {self.served.name!r}",
                           param="model", code="model_not_found")

    def submit(self, prompts: list[list[int]], sampling: list[Sampling]) -> tuple[list[Request], asyncio.Queue[tuple[int, Event]]]:
        """Queue one request per (prompt, sampling); their events arrive on one asyncio queue as (index, event)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        requests: list[Request] = []

        def emitter(index: int) -> Callable[[Event], None]:
            def emit(event: Event) -> None:  # called on the scheduler's thread
                loop.call_soon_threadsafe(events.put_nowait, (index, event))
            return emit

        try:
            for index, (prompt, params) in enumerate(zip(prompts, sampling)):
                request = Request(prompt, params, emitter(index))
                self.scheduler.submit(request)
                requests.append(request)
        except QueueFull as full:
            for request in requests:
                self.scheduler.cancel(request)
            raise ApiError(503, str(full), kind="overloaded_error", code="queue_full") from None
        except ValueError as error:  # longer than the context
            for request in requests:
                self.scheduler.cancel(request)
            raise ApiError(400, str(error), param="messages" if len(prompts) == 1 else "prompt",
                           code="context_length_exceeded") from None
        return requests, events

    def sampling(self, body: Common, prompt_length: int, max_tokens: int | None, logprobs: int | None,
                 prompt_logprobs: bool = False) -> list[Sampling]:
        room = self.scheduler.max_length - 1 - prompt_length
        if room < 0 or (room == 0 and (max_tokens is None or max_tokens > 0)):
            raise ApiError(400, f"the prompt is {prompt_length} tokens; this server's context is {self.scheduler.max_length} "
                           "and leaves no room to answer", param="messages", code="context_length_exceeded")
        limit = room if max_tokens is None else min(max_tokens, room)
        stops = _stops(body.stop)
        return [Sampling(max_tokens=limit, temperature=body.temperature, top_p=body.top_p, top_k=max(body.top_k, 0),
                         seed=None if body.seed is None else body.seed + i, stop=stops, logprobs=logprobs,
                         prompt_logprobs=prompt_logprobs) for i in range(body.n)]


async def _events(http: HttpRequest, service: Service, requests: list[Request],
                  queue: asyncio.Queue[tuple[int, Event]]) -> AsyncIterator[tuple[int, Event]]:
    """The requests' events until each has finished; a disconnected client cancels them all."""
    open_requests = set(range(len(requests)))
    try:
        while open_requests:
            try:
                index, event = await asyncio.wait_for(queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await http.is_disconnected():
                    return
                continue
            if isinstance(event, (FinishEvent, FailEvent)):
                open_requests.discard(index)
            yield index, event
    finally:
        for index in open_requests:
            service.scheduler.cancel(requests[index])


def _chat_logprob(service: Service, event: TokenEvent) -> dict[str, Any]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = service.token_text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    assert event.logprob is not None
    return {**entry(event.token, event.logprob), "top_logprobs": [entry(t, lp) for t, lp in event.top]}


class ChatChoice:
    """One choice of a chat completion as its events arrive: text split into reasoning, content and tool calls."""

    def __init__(self, thinking: bool, tools: bool) -> None:
        self.reasoning_split = ReasoningSplit(thinking)
        self.tool_split = ToolCallSplit() if tools else None
        self.reasoning: list[str] = []
        self.content: list[str] = []
        self.logprobs: list[dict[str, Any]] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.finish: FinishEvent | None = None

    def add_text(self, text: str, final: bool = False) -> tuple[str, str]:
        reasoning, content = self.reasoning_split.push(text, final)
        if self.tool_split is not None:
            content = self.tool_split.push(content)
            if final:
                rest, calls = self.tool_split.finish()
                content += rest
                self.tool_calls = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                   for c in calls]
        self.reasoning.append(reasoning)
        self.content.append(content)
        return reasoning, content

    def finish_reason(self) -> str:
        assert self.finish is not None
        if self.tool_calls:
            return "tool_calls"
        return "stop" if self.finish.reason == "stop" else "length"


def create_app(served: ServedModel, scheduler: Scheduler, api_key: str | None = None) -> FastAPI:
    """The FastAPI application serving `served` through `scheduler`."""
    app = FastAPI(title="minimind-spec serve", docs_url=None, redoc_url=None)
    service = Service(served, scheduler)

    @app.exception_handler(ApiError)
    async def api_error(_: HttpRequest, error: ApiError) -> JSONResponse:
        return error_body(error.status, error.message, error.kind, error.param, error.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: HttpRequest, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(loc) or None
        return error_body(400, f"{param or 'the request'}: {first.get('msg')}", "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: HttpRequest, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return error_body(error.status_code, str(error.detail), kind)

    @app.middleware("http")
    async def authenticate(http: HttpRequest, call_next: Callable[[HttpRequest], Any]) -> Any:
        if api_key is not None and http.url.path.startswith("/v1/"):
            if http.headers.get("authorization", "") != f"Bearer {api_key}":
                return error_body(401, "invalid API key (send it as `Authorization: Bearer KEY`)", "authentication_error",
                                  code="invalid_api_key")
        return await call_next(http)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        active, waiting = scheduler.load
        return {"status": "ok", "model": served.name, "active": active, "waiting": waiting, "max_batch": scheduler.max_batch}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": int(time.time()),
                                            "owned_by": "minimind-spec", "max_model_len": scheduler.max_length}]}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = resources.files("minimind_spec.engine.serve").joinpath("page.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("{{MODEL}}", served.name))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, http: HttpRequest) -> JSONResponse | StreamingResponse:
        service.check_model(body.model)
        kwargs = body.chat_template_kwargs or {}
        thinking = bool(kwargs.get("enable_thinking", kwargs.get("open_thinking", False)))
        tools = body.tools if body.tool_choice != "none" else None
        try:
            prompt = chat_prompt(served.tokenizer, body.messages, body.tools, thinking)
        except ValueError as error:
            raise ApiError(400, str(error), param="messages") from None
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        top = body.top_logprobs or 0
        sampling = service.sampling(body, len(prompt), max_tokens, top if body.logprobs else None)
        requests, queue = service.submit([prompt] * body.n, sampling)
        choices = [ChatChoice(thinking, bool(tools)) for _ in range(body.n)]
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_chat_stream(http, service, requests, queue, choices, completion_id, created,
                                                  include_usage), media_type="text/event-stream")
        async for index, event in _events(http, service, requests, queue):
            _chat_event(service, choices[index], event, body.logprobs)
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": created, "model": served.name,
            "choices": [_chat_message(i, choice, body.logprobs) for i, choice in enumerate(choices)],
            "usage": _usage([c.finish for c in choices if c.finish is not None]),
        })

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, http: HttpRequest) -> JSONResponse | StreamingResponse:
        service.check_model(body.model)
        prompts = _prompts(served, body.prompt)
        sampling: list[Sampling] = []
        for prompt in prompts:
            sampling += service.sampling(body, len(prompt), body.max_tokens, body.logprobs,
                                         prompt_logprobs=body.echo and body.logprobs is not None)
        all_prompts = [p for p in prompts for _ in range(body.n)]
        requests, queue = service.submit(all_prompts, sampling)
        completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        texts: list[list[str]] = [[] for _ in requests]
        tokens: list[list[TokenEvent]] = [[] for _ in requests]
        finishes: list[FinishEvent | None] = [None] * len(requests)
        if body.stream:
            return StreamingResponse(_completion_stream(http, service, requests, queue, completion_id, created, body),
                                     media_type="text/event-stream")
        async for index, event in _events(http, service, requests, queue):
            if isinstance(event, FailEvent):
                raise ApiError(500, event.message, kind="server_error")
            if isinstance(event, TokenEvent):
                texts[index].append(event.text)
                tokens[index].append(event)
            else:
                texts[index].append(event.text)
                finishes[index] = event
        choices = []
        for index, prompt in enumerate(all_prompts):
            finish = finishes[index]
            assert finish is not None
            text = "".join(texts[index])
            prompt_text = served.tokenizer.decode(prompt) if body.echo else ""
            choices.append({"text": prompt_text + text, "index": index,
                            "logprobs": _completion_logprobs(service, prompt, finish, tokens[index], body.echo)
                            if body.logprobs is not None else None,
                            "finish_reason": "stop" if finish.reason == "stop" else "length"})
        done = [f for f in finishes if f is not None]
        usage = {"prompt_tokens": sum(len(p) for p in prompts), "completion_tokens": sum(f.completion_tokens for f in done)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return JSONResponse({"id": completion_id, "object": "text_completion", "created": created, "model": served.name,
                             "choices": choices, "usage": usage})

    return app


def _prompts(served: ServedModel, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
    """The prompt (or prompts) as token ids: text is encoded as is (no template), ids are checked against the vocabulary."""
    if isinstance(prompt, str):
        batch: list[str | list[int]] = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        batch = [[int(p) for p in prompt if isinstance(p, int)]]
    else:
        batch = [p for p in prompt if isinstance(p, (str, list))]
    if not batch:
        raise ApiError(400, "prompt is empty", param="prompt")
    vocab = served.model.vocab_size
    out = []
    for item in batch:
        ids = served.tokenizer.encode(item) if isinstance(item, str) else list(item)
        if not ids:
            raise ApiError(400, "a prompt encodes to no tokens", param="prompt")
        if any(not 0 <= t < vocab for t in ids):
            raise ApiError(400, f"prompt token ids must lie in [0, {vocab})", param="prompt")
        out.append(ids)
    return out


def _completion_logprobs(service: Service, prompt: list[int], finish: FinishEvent, generated: list[TokenEvent],
                         echo: bool) -> dict[str, Any]:
    """OpenAI's legacy logprobs: tokens, token_logprobs, top_logprobs (token text -> logprob), text_offset."""
    entries: list[tuple[int, float | None, tuple[tuple[int, float], ...]]] = []
    if echo:
        entries += [(token, lp, top) for token, (lp, top) in zip(prompt, finish.prompt_logprobs)]
    entries += [(e.token, e.logprob, e.top) for e in generated]
    tokens = [service.token_text(t) for t, _, _ in entries]
    offsets, position = [], 0
    for text in tokens:
        offsets.append(position)
        position += len(text)
    return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [({service.token_text(t): lp for t, lp in top} if lp is not None else None)
                             for _, lp, top in entries],
            "text_offset": offsets}


def _chat_event(service: Service, choice: ChatChoice, event: Event, logprobs: bool) -> tuple[str, str]:
    if isinstance(event, FailEvent):
        raise ApiError(500, event.message, kind="server_error")
    if isinstance(event, TokenEvent):
        if logprobs:
            choice.logprobs.append(_chat_logprob(service, event))
        return choice.add_text(event.text)
    choice.finish = event
    return choice.add_text(event.text, final=True)


def _chat_message(index: int, choice: ChatChoice, logprobs: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(choice.content)}
    reasoning = "".join(choice.reasoning)
    if reasoning:
        message["reasoning_content"] = reasoning
    if choice.tool_calls:
        message["tool_calls"] = choice.tool_calls
        message["content"] = message["content"].strip() or None  # the newline before the first call is the template's
    return {"index": index, "message": message, "logprobs": {"content": choice.logprobs} if logprobs else None,
            "finish_reason": choice.finish_reason()}


async def _chat_stream(http: HttpRequest, service: Service, requests: list[Request], queue: asyncio.Queue[tuple[int, Event]],
                       choices: list[ChatChoice], completion_id: str, created: int, include_usage: bool) -> AsyncIterator[str]:
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": service.served.name}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> str:
        return _sse({**head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})

    for index in range(len(choices)):
        yield chunk(index, {"role": "assistant", "content": ""})
    logprobs = requests[0].sampling.logprobs is not None
    async for index, event in _events(http, service, requests, queue):
        choice = choices[index]
        if isinstance(event, FailEvent):
            yield _sse({"error": {"message": event.message, "type": "server_error", "param": None, "code": None}})
            return
        entries_before = len(choice.logprobs)
        reasoning, content = _chat_event(service, choice, event, logprobs)
        delta: dict[str, Any] = {}
        if reasoning:
            delta["reasoning_content"] = reasoning
        if content:
            delta["content"] = content
        new_logprobs = {"content": choice.logprobs[entries_before:]} if logprobs and len(choice.logprobs) > entries_before else None
        if delta or new_logprobs:
            yield chunk(index, delta, logprobs=new_logprobs)
        if isinstance(event, FinishEvent):
            if choice.tool_calls:
                yield chunk(index, {"tool_calls": [{"index": i, **call} for i, call in enumerate(choice.tool_calls)]})
            yield chunk(index, {}, choice.finish_reason())
    if include_usage:
        yield _sse({**head, "choices": [], "usage": _usage([c.finish for c in choices if c.finish is not None])})
    yield _sse("[DONE]")


async def _completion_stream(http: HttpRequest, service: Service, requests: list[Request],
                             queue: asyncio.Queue[tuple[int, Event]], completion_id: str, created: int,
                             body: CompletionRequest) -> AsyncIterator[str]:
    head = {"id": completion_id, "object": "text_completion", "created": created, "model": service.served.name}
    finishes: list[FinishEvent] = []
    async for index, event in _events(http, service, requests, queue):
        if isinstance(event, FailEvent):
            yield _sse({"error": {"message": event.message, "type": "server_error", "param": None, "code": None}})
            return
        finish: Literal["stop", "length"] | None = None
        if isinstance(event, FinishEvent):
            finishes.append(event)
            finish = "stop" if event.reason == "stop" else "length"
        if event.text or finish:
            yield _sse({**head, "choices": [{"text": event.text, "index": index, "logprobs": None, "finish_reason": finish}]})
    if body.stream_options and body.stream_options.include_usage:
        usage = {"prompt_tokens": sum(len(r.prompt) for r in requests), "completion_tokens": sum(f.completion_tokens for f in finishes)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        yield _sse({**head, "choices": [], "usage": usage})
    yield _sse("[DONE]")
