"""The continuous-batching scheduler: one thread that owns the model and runs every request.

Requests wait in a queue (bounded: `QueueFull` beyond it, which the server answers with 503).
Each turn of the loop first admits waiting requests into free rows of the `SlotBatch` (a
request's prefill runs alone, and its first token is chosen from the prefill's logits), then
runs one decode step over every active row together. A request leaves its row at EOS, at a
stop string, at `max_tokens`, when its row of the cache is full, or when it is cancelled (the
client went away); the row is free for the next request at once.

Tokens are chosen per request: greedy at temperature 0, else sampled (top-k, top-p) with the
request's own generator (seeded when the request gives a seed, so a seeded request repeats).
Every event (a token with its text delta and log-probabilities, the end, a failure) goes to the
request's `emit`, which the server points at an asyncio queue and the terminal chat at a plain one.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from builders.inference.generate import filter_top_k_top_p
from builders.inference.quant import check_quant
from builders.inference.slots import SlotBatch
from builders.model import MiniMindForCausalLM

from .text import TextStream

_log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests are waiting than the server takes."""


@dataclass(frozen=True)
class Sampling:
    """How one request generates."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k: the chosen token's log-probability and the k most likely
    prompt_logprobs: bool = False  # also score the prompt's tokens (completions with echo)


@dataclass(frozen=True)
class TokenEvent:
    token: int
    text: str  # the text this token releases (possibly "", held back for a stop string)
    logprob: float | None
    top: tuple[tuple[int, float], ...]  # (token, log-probability) of the most likely tokens


@dataclass(frozen=True)
class FinishEvent:
    reason: Literal["stop", "length", "cancelled"]
    text: str  # held-back text released at the end
    prompt_tokens: int
    completion_tokens: int
    prompt_logprobs: tuple[tuple[float | None, tuple[tuple[int, float], ...]], ...] = ()  # per prompt token (first: None)


@dataclass(frozen=True)
class FailEvent:
    message: str


Event = TokenEvent | FinishEvent | FailEvent


@dataclass(eq=False)
class Request:
    prompt: list[int]
    sampling: Sampling
    emit: Callable[[Event], None]
    id: int = field(default_factory=itertools.count().__next__)
    cancelled: threading.Event = field(default_factory=threading.Event)
    slot: int | None = None
    generated: int = 0
    last_token: int = -1
    stream: TextStream | None = None
    generator: torch.Generator | None = None
    submitted: float = field(default_factory=time.perf_counter)


def _logprobs(logits: torch.Tensor, token: int, k: int | None) -> tuple[float | None, tuple[tuple[int, float], ...]]:
    # logits: (V,) -> the chosen token's log-probability and the top k (token, log-probability)
    if k is None:
        return None, ()
    logp = torch.log_softmax(logits.float(), dim=-1)  # (V,)
    top = logp.topk(k) if k > 0 else None
    pairs = tuple(zip(top.indices.tolist(), top.values.tolist())) if top is not None else ()
    return float(logp[token]), pairs


class Scheduler:
    """Runs requests on `model` in up to `max_batch` rows of `max_length` positions."""

    def __init__(self, model: MiniMindForCausalLM, decode: Callable[[list[int]], str], stop_ids: set[int],
                 max_batch: int = 8, max_length: int = 2048, max_queue: int = 64, quant: str = "none") -> None:
        self.model = model.eval()
        self.decode = decode
        self.stop_ids = stop_ids
        self.max_batch = max_batch
        self.max_length = min(max_length, model.max_position_embeddings)
        self.max_queue = max_queue
        self.batch = SlotBatch(model, max_batch, self.max_length, check_quant(quant))
        self.waiting: deque[Request] = deque()
        self.active: dict[int, Request] = {}  # slot -> request
        self.lock = threading.Condition()
        self.thread: threading.Thread | None = None
        self.stopping = False
        self.steps = 0
        self.rows_stepped = 0  # sum of batch sizes over decode steps (mean batch = rows_stepped / steps)
        self.peak_rows = 0  # the largest batch a decode step ran

    # ----- the server's side -----

    def submit(self, request: Request) -> None:
        if len(request.prompt) >= self.max_length:
            raise ValueError(f"the prompt is {len(request.prompt)} tokens; this server takes at most "
                             f"{self.max_length - 1} (its context is {self.max_length})")
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (the limit is {self.max_queue}); try again later")
            self.waiting.append(request)
            self.lock.notify()

    def cancel(self, request: Request) -> None:
        request.cancelled.set()
        with self.lock:
            self.lock.notify()

    def start(self) -> Scheduler:
        """Run the loop on a thread of its own (tests, embedding); `serve` runs it on the main thread instead."""
        self.thread = threading.Thread(target=self._loop, name="minimind-scheduler", daemon=True)
        self.thread.start()
        return self

    def run(self) -> None:
        """Run the loop on the calling thread until `close` (or Ctrl-C). All torch work should happen on one
        thread: each thread that computes gets its own OpenMP worker team, and on a small CPU two teams
        take turns spinning (measured here: batch-1 decode at about half speed when the model was built on
        one thread and run on another)."""
        self._loop()

    def pump(self) -> bool:
        """One turn of the loop on the calling thread (the terminal chat drives it so); True while work remains."""
        self._admit()
        self._drop_cancelled()
        if self.active:
            self._step()
        with self.lock:
            return bool(self.active or self.waiting)

    def close(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify()
        if self.thread is not None:
            self.thread.join(timeout=10)

    @property
    def load(self) -> tuple[int, int]:
        """(active rows, waiting requests)."""
        with self.lock:
            return len(self.active), len(self.waiting)

    # ----- the model's side (the scheduler thread) -----

    def _loop(self) -> None:
        torch.set_grad_enabled(False)  # per thread
        while True:
            with self.lock:
                while not self.stopping and not self.waiting and not self.active:
                    self.lock.wait(timeout=0.5)  # a timeout keeps the main thread answering Ctrl-C
                if self.stopping:
                    return
            try:
                self._admit()
                self._drop_cancelled()
                if self.active:
                    self._step()
            except Exception as error:  # noqa: BLE001 - a failure ends the requests it touched, not the server
                _log.exception("the scheduler failed")
                for request in list(self.active.values()):
                    self._release(request)
                    request.emit(FailEvent(f"generation failed: {error}"))

    def _admit(self) -> None:
        while True:
            with self.lock:
                free = [s for s in range(self.max_batch) if s not in self.active]
                if not free or not self.waiting:
                    return
                request = self.waiting.popleft()
            if request.cancelled.is_set():
                request.emit(FinishEvent("cancelled", "", len(request.prompt), 0))
                continue
            self._start(request, free[0])

    def _start(self, request: Request, slot: int) -> None:
        sampling = request.sampling
        request.stream = TextStream(self.decode, sampling.stop)
        if sampling.seed is not None:
            request.generator = torch.Generator().manual_seed(sampling.seed)
        prompt_scores: tuple[tuple[float | None, tuple[tuple[int, float], ...]], ...] = ()
        if sampling.prompt_logprobs:
            prompt_scores = self._score_prompt(request.prompt, sampling.logprobs or 0)
        if sampling.max_tokens == 0:
            request.emit(FinishEvent("length", "", len(request.prompt), 0, prompt_scores))
            return
        request.slot = slot
        self.active[slot] = request
        logits = self.batch.prefill(slot, request.prompt)  # (V,)
        self._take(request, logits, prompt_scores)

    @torch.inference_mode()
    def _score_prompt(self, prompt: list[int], k: int) -> tuple[tuple[float | None, tuple[tuple[int, float], ...]], ...]:
        logits = self.model(torch.tensor([prompt])).logits[0]  # (T, V)
        scores: list[tuple[float | None, tuple[tuple[int, float], ...]]] = [(None, ())]
        for position in range(1, len(prompt)):
            scores.append(_logprobs(logits[position - 1], prompt[position], k))
        return tuple(scores)

    def _step(self) -> None:
        slots = sorted(self.active)
        logits = self.batch.step(slots, [self.active[s].last_token for s in slots])  # (n, V)
        self.steps += 1
        self.rows_stepped += len(slots)
        self.peak_rows = max(self.peak_rows, len(slots))
        for row, slot in enumerate(slots):
            self._take(self.active[slot], logits[row])

    def _choose(self, request: Request, logits: torch.Tensor) -> int:
        # logits: (V,) -> the next token
        sampling = request.sampling
        if sampling.temperature <= 0:
            return int(logits.argmax())
        filtered = filter_top_k_top_p(logits.float()[None] / sampling.temperature, sampling.top_k, sampling.top_p)  # (1, V)
        return int(torch.multinomial(filtered.softmax(-1), 1, generator=request.generator))

    def _take(self, request: Request, logits: torch.Tensor,
              prompt_scores: tuple[tuple[float | None, tuple[tuple[int, float], ...]], ...] = ()) -> None:
        """Choose the request's next token from `logits` (V,), send it, and end the request when it is done."""
        assert request.stream is not None and request.slot is not None
        if request.cancelled.is_set():
            self._finish(request, "cancelled", prompt_scores)
            return
        token = self._choose(request, logits)
        if token in self.stop_ids:
            if request.sampling.prompt_logprobs:  # scoring (echo): the end token's log-probability is reported too, as
                request.generated += 1  # OpenAI's API does; scorers such as lm-eval read one entry past the prompt
                logprob, top = _logprobs(logits, token, request.sampling.logprobs)
                request.emit(TokenEvent(token, "", logprob, top))
            self._finish(request, "stop", prompt_scores)
            return
        request.generated += 1
        request.last_token = token
        logprob, top = _logprobs(logits, token, request.sampling.logprobs)
        text, stopped = request.stream.push(token)
        request.emit(TokenEvent(token, text, logprob, top))
        if stopped:
            self._finish(request, "stop", prompt_scores)
        elif request.generated >= request.sampling.max_tokens or self.batch.length(request.slot) + 1 >= self.max_length:
            self._finish(request, "length", prompt_scores)

    def _finish(self, request: Request, reason: Literal["stop", "length", "cancelled"],
                prompt_scores: tuple[tuple[float | None, tuple[tuple[int, float], ...]], ...] = ()) -> None:
        assert request.stream is not None
        tail = request.stream.flush()  # text held back for a stop string that never came (after a stop string: "")
        self._release(request)
        request.emit(FinishEvent(reason, tail, len(request.prompt), request.generated, prompt_scores))

    def _release(self, request: Request) -> None:
        if request.slot is not None:
            self.active.pop(request.slot, None)
            self.batch.free(request.slot)
            request.slot = None

    def _drop_cancelled(self) -> None:
        for request in [r for r in self.active.values() if r.cancelled.is_set()]:
            self._finish(request, "cancelled")
