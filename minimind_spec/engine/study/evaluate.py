"""The study's measurements on a trained model and its run, each a value with its standard error.

Held-out sets come from the task's data directory: `heldout_text.jsonl` (stories and general
text: long-context, mixed-domain and general-text losses, expert load), `eval.jsonl` (problems:
greedy answers and their `<think>` steps) and `eval_pairs.jsonl` (chosen/rejected: the answer
loss and the preference metrics). Training-curve metrics (step time, loss spikes, gradient-norm
variance, the DPO monitor's warnings) are read from the run's metrics.jsonl.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from builders.model import MiniMindForCausalLM
from builders.norm import LayerNorm, RMSNorm
from builders.techniques import token_log_probs

from ..data.chatml import encode_conversation, encode_document, render
from ..data.records import Conversation, PreferencePair, Turn, read_records
from ..data.tokenizer import ChatTokenizer
from ...errors import InputError
from ...metrics import MetricsRow, series

ANSWER = re.compile(r"The answer is (-?\d+)")
STEP = re.compile(r"(-?\d+) ([+-]) (-?\d+) = (-?\d+)")
IGNORE = -100
TEXT_DOMAINS = ("story", "general")  # the pretraining text's domains: the mixed-domain set


@dataclass(frozen=True)
class Value:
    value: float
    error: float | None = None  # standard error (None: none known)
    exact: bool = False


@dataclass
class HeldOut:
    """The task's held-out sets, tokenized once for every model measured."""

    documents: dict[str, list[list[int]]]  # domain -> token ids of each document
    conversations: list[tuple[list[int], list[int]]]  # (input ids, labels on the assistant span)
    pairs: list[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]]  # chosen, rejected
    problems: list[tuple[list[int], int]]  # (prompt ids, the right answer)
    eos_id: int
    pad_id: int
    decode: Callable[[list[int]], str]

    @classmethod
    def load(cls, data: Path, tokenizer: ChatTokenizer, seq_len: int) -> "HeldOut":
        documents: dict[str, list[list[int]]] = {}
        for line in (data / "heldout_text.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            documents.setdefault(row["domain"], []).append(list(encode_document(tokenizer, row["text"]).input_ids))
        pairs, conversations = [], []
        for _, pair in read_records(data / "eval_pairs.jsonl", "preference"):
            sides = []
            assert isinstance(pair, PreferencePair)
            for side in (pair.chosen, pair.rejected):
                if not isinstance(side, Conversation):
                    raise InputError(f"{data / 'eval_pairs.jsonl'}: the held-out pairs are conversations, not plain text")
                encoded = encode_conversation(tokenizer, side, max_length=seq_len)
                sides.append((list(encoded.input_ids), list(encoded.labels)))
            pairs.append((sides[0], sides[1]))
            conversations.append(sides[0])
        documents["conversation"] = [ids for ids, _ in conversations]
        problems = []
        for line in (data / "eval.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            prompt = render(Conversation((Turn("user", row["prompt"]),)), add_generation_prompt=True,
                            chat_format=tokenizer.chat_format)
            problems.append((tokenizer.encode(prompt), int(row["answer"])))
        empty = [name for name, rows in (("eval.jsonl", problems), ("eval_pairs.jsonl", pairs)) if not rows]
        empty += [f"heldout_text.jsonl (domain {d!r})" for d in TEXT_DOMAINS if not documents.get(d)]
        if empty:
            raise InputError(f"the task's held-out data in {data} has nothing in {', '.join(empty)}")
        return cls(documents, conversations, pairs, problems, tokenizer.eos_id, tokenizer.pad_id, tokenizer.decode)


def _padded(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) input ids and labels (IGNORE on padding)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([i + [pad_id] * (width - len(i)) for i, _ in rows])
    labels = torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in rows])
    return ids, labels


@torch.no_grad()
def _token_nll(model: nn.Module, rows: list[tuple[list[int], list[int]]], pad_id: int, batch: int = 32) -> list[np.ndarray]:
    """Per row, the negative log-likelihood of each labelled next token (in order)."""
    out = []
    for start in range(0, len(rows), batch):
        ids, labels = _padded(rows[start:start + batch], pad_id)
        log_probs, mask = token_log_probs(model(ids).logits.float(), labels)  # (B, T), (B, T)
        out += [(-lp[m]).double().numpy() for lp, m in zip(log_probs, mask)]
    return out


def _mean(values: np.ndarray) -> Value:
    return Value(float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None)


def max_positions(model: nn.Module) -> int:
    return int(getattr(model, "max_position_embeddings"))


def text_windows(held: HeldOut, width: int) -> list[list[int]]:
    """The held-out text domains as one token stream (documents as encoded, each ending in its
    EOS), cut into windows of `width` tokens: no padding anywhere."""
    stream = [t for domain in TEXT_DOMAINS for doc in held.documents.get(domain, []) for t in doc]
    windows = [stream[i:i + width] for i in range(0, len(stream) - width + 1, width)]
    if not windows:
        raise InputError(f"the held-out text holds {len(stream)} tokens: not one window of {width} "
                         "(write more held-out text)")
    return windows


def position_losses(model: nn.Module, held: HeldOut, seq_len: int, buckets: int = 16) -> tuple[dict[str, Value | None], list]:
    """Held-out loss at positions [0, L), [L, 2L), [2L, 4L) of 4 x seq_len windows of the held-out text
    (None where the model has no positions: what it cannot represent), and the curve of loss
    against position in `buckets` bins."""
    width = min(4 * seq_len, max_positions(model))
    windows = text_windows(held, width)
    nll = np.stack(_token_nll(model, [(w, w) for w in windows], held.pad_id))  # (windows, width - 1): position p predicts p + 1
    per_window = lambda lo, hi: nll[:, lo:hi].mean(axis=1)  # noqa: E731
    out: dict[str, Value | None] = {}
    for name, (lo, hi) in {"loss_1x": (0, seq_len - 1), "loss_2x": (seq_len - 1, 2 * seq_len - 1),
                           "loss_4x": (2 * seq_len - 1, 4 * seq_len - 1)}.items():
        out[name] = _mean(per_window(lo, hi)) if hi <= nll.shape[1] else None
    edges = np.linspace(0, 4 * seq_len - 1, buckets + 1).astype(int)
    curve = [(int(hi), float(nll[:, lo:hi].mean()) if hi <= nll.shape[1] else None) for lo, hi in zip(edges[:-1], edges[1:])]
    return out, curve


def domain_losses(model: nn.Module, held: HeldOut, seq_len: int) -> dict[str, Value]:
    """Held-out loss per domain (documents cut to seq_len), and the mean over the text domains
    (arithmetic stories and general text): the mixed-domain loss. Chat conversations are
    reported on their own: a pretrained model has never seen the chat tokens."""
    out: dict[str, Value] = {}
    per_document: list[np.ndarray] = []
    for domain, documents in sorted(held.documents.items()):
        rows = [(d[:seq_len], d[:seq_len]) for d in documents]
        means = np.array([n.mean() for n in _token_nll(model, rows, held.pad_id)])
        out[f"{domain}_loss"] = _mean(means)
        if domain in TEXT_DOMAINS:
            per_document.append(means)
    mixed = np.mean([m.mean() for m in per_document])
    error = math.sqrt(sum(float(m.var(ddof=1)) / len(m) for m in per_document)) / len(per_document)
    out["mixed_loss"] = Value(float(mixed), error)
    return out


def answer_loss(model: nn.Module, held: HeldOut) -> Value | None:
    """Mean loss over each held-out worked answer's assistant tokens (the SFT objective, held out);
    None when seq_len cuts every answer off."""
    answered = [row for row in held.conversations if any(label != IGNORE for label in row[1][1:])]
    return _mean(np.array([n.mean() for n in _token_nll(model, answered, held.pad_id)])) if answered else None


def score_answer(text: str, answer: int) -> tuple[bool, int, int]:
    """(the final answer is right, `a +/- b = c` steps before it, how many of them are arithmetically right)."""
    found = ANSWER.search(text)
    steps = STEP.findall(text.split("The answer is")[0])
    correct = sum((int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c) for a, op, b, c in steps)
    return found is not None and int(found.group(1)) == answer, len(steps), correct


@torch.no_grad()
def answers(model: MiniMindForCausalLM, held: HeldOut, batch: int = 50, max_new_tokens: int = 48) -> dict[str, Value | None]:
    """Greedy answers to the held-out problems: exact match, and the share of the `a +/- b = c`
    steps of the reasoning that are arithmetically right."""
    right, steps, correct_steps = [], 0, 0
    for start in range(0, len(held.problems), batch):
        chunk = held.problems[start:start + batch]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([[held.pad_id] * (width - len(p)) + p for p, _ in chunk])  # left-padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in chunk])
        output = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=held.eos_id,
                                pad_token_id=held.pad_id)
        for (_, answer), row in zip(chunk, output[:, width:].tolist()):
            text = held.decode([t for t in row if t not in (held.pad_id, held.eos_id)])
            is_right, found_steps, correct = score_answer(text, answer)
            right.append(is_right)
            steps, correct_steps = steps + found_steps, correct_steps + correct
    share = float(np.mean(right))
    out: dict[str, Value | None] = {"exact_match": Value(share, math.sqrt(share * (1 - share) / len(right)))}
    accuracy = correct_steps / steps if steps else None  # no steps written: nothing to score
    out["think_step_accuracy"] = Value(accuracy, math.sqrt(accuracy * (1 - accuracy) / steps)) if accuracy is not None else None
    out["think_steps_per_answer"] = Value(steps / len(right))
    return out


@torch.no_grad()
def preference(policy: nn.Module, reference: nn.Module, held: HeldOut, batch: int = 32) -> dict[str, Value]:
    """On the held-out pairs: preference accuracy (policy log p(chosen) > log p(rejected)), the
    log-ratio margin [log pi/ref (chosen) - log pi/ref (rejected)] (beta-free: the DPO reward
    margin / beta), and the KL(policy || reference) per response token of the chosen answers."""
    wins, margins, kls = [], [], []
    for start in range(0, len(held.pairs), batch):
        chunk = held.pairs[start:start + batch]
        rows = [side for pair in chunk for side in pair]
        ids, labels = _padded(rows, held.pad_id)
        policy_logits, reference_logits = policy(ids).logits.float(), reference(ids).logits.float()
        lp_policy, mask = token_log_probs(policy_logits, labels)
        lp_reference, _ = token_log_probs(reference_logits, labels)
        seq_policy, seq_reference = lp_policy.sum(-1).view(-1, 2), lp_reference.sum(-1).view(-1, 2)  # (pairs, 2)
        wins += (seq_policy[:, 0] > seq_policy[:, 1]).tolist()
        ratio = seq_policy - seq_reference
        margins += (ratio[:, 0] - ratio[:, 1]).tolist()
        # KL over the whole vocabulary at each chosen response position (the position predicting the next label)
        chosen = slice(0, None, 2)
        p_log = torch.log_softmax(policy_logits[chosen], dim=-1)[:, :-1]
        q_log = torch.log_softmax(reference_logits[chosen], dim=-1)[:, :-1]
        kl = (p_log.exp() * (p_log - q_log)).sum(-1)  # (pairs, T - 1)
        response = mask[chosen][:, :-1] if mask.shape[1] > 1 else mask[chosen]
        kls += [float(k[m].mean()) for k, m in zip(kl, response) if bool(m.any())]  # a response cut off by seq_len: none
    share = float(np.mean(wins))
    rewarded = float(np.mean(np.array(margins) > 0))  # DPO's reward accuracy: the log-ratio margin is positive
    return {"preference_accuracy": Value(share, math.sqrt(share * (1 - share) / len(wins))),
            "reward_accuracy": Value(rewarded, math.sqrt(rewarded * (1 - rewarded) / len(margins))),
            "logratio_margin": _mean(np.array(margins)), "kl_to_reference": _mean(np.array(kls))}


@torch.no_grad()
def expert_load(model: nn.Module, held: HeldOut, seq_len: int) -> tuple[dict[str, Value], list[list[float]]]:
    """Per-layer coefficient of variation of the tokens routed to each expert over the held-out
    text (stories and general text, seq_len windows of the stream: no padding is routed), the
    mean over layers with its standard error over layers, and each layer's shares."""
    totals = None
    windows = text_windows(held, seq_len)
    for start in range(0, len(windows), 32):
        counts = model(torch.tensor(windows[start:start + 32])).expert_counts  # (MoE layers, E)
        if counts is None:
            return {}, []
        totals = counts.double() if totals is None else totals + counts.double()
    assert totals is not None
    cv = (totals.std(dim=-1, unbiased=False) / totals.mean(dim=-1)).numpy()  # (layers,)
    shares = (totals / totals.sum(dim=-1, keepdim=True)).tolist()
    error = float(cv.std(ddof=1) / math.sqrt(len(cv))) if len(cv) > 1 else None
    return {"expert_load_cv": Value(float(cv.mean()), error), "expert_load_cv_worst_layer": Value(float(cv.max()))}, shares


def norm_saved_bytes(model: nn.Module, seq_len: int, batch: int = 2) -> Value:
    """Bytes the norm layers keep for backward, per token, measured on one pretraining forward
    (every parameter trainable):
    every tensor autograd saves inside an RMSNorm or LayerNorm, counted once per storage,
    leaving out the norm's input and weight (they exist anyway)."""
    saved: dict[int, int] = {}
    inside: list[tuple[nn.Module, int]] = []  # the norm running now, and its input's storage

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if inside:
            module, input_pointer = inside[-1]
            exempt = {input_pointer, *(p.data_ptr() for p in module.parameters())}
            pointer = tensor.untyped_storage().data_ptr()
            if pointer not in exempt:
                saved[pointer] = tensor.untyped_storage().nbytes()
        return tensor

    def before(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        inside.append((module, args[0].untyped_storage().data_ptr()))

    def after(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        inside.clear()

    norms = [m for m in model.modules() if isinstance(m, (RMSNorm, LayerNorm))]
    handles = [h for m in norms for h in (m.register_forward_pre_hook(before), m.register_forward_hook(after))]
    was_training, trainable = model.training, {p: p.requires_grad for p in model.parameters()}
    model.train()
    for parameter in trainable:  # as in pretraining: everything trains (what is saved depends on it)
        parameter.requires_grad_(True)
    try:
        ids = torch.randint(0, 100, (batch, seq_len))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(ids).logits.sum()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        for parameter, flag in trainable.items():
            parameter.requires_grad_(flag)
    return Value(sum(saved.values()) / (batch * seq_len), exact=True)


def training_curve(rows: list[MetricsRow]) -> dict[str, Value]:
    """From a stage's metrics rows (metrics.jsonl): median seconds per optimizer step, loss spikes (a step whose
    loss exceeds the median of the previous 20 by 10%, after the first 20), the variance of the
    gradient norm over the second half of training, and the warnings raised."""
    out: dict[str, Value] = {}
    tokens = np.array([r.tokens for r in rows], dtype=float)
    rates = np.array([r.tokens_per_s or 0.0 for r in rows], dtype=float)
    step_tokens = np.diff(tokens, prepend=0.0)
    seconds = (step_tokens / np.maximum(rates, 1e-9))[min(5, len(rows) - 1):]  # the first steps warm up
    if len(seconds):
        # the standard error of a median: 1.2533 x that of a mean
        out["step_seconds"] = Value(float(np.median(seconds)),
                                    float(1.2533 * seconds.std(ddof=1) / math.sqrt(len(seconds))) if len(seconds) > 1 else None)
    losses = np.array([r.loss for r in rows], dtype=float)
    spikes = sum(losses[i] > 1.1 * np.median(losses[i - 20:i]) for i in range(20, len(losses)))
    out["loss_spikes"] = Value(float(spikes), math.sqrt(max(spikes, 1)))  # a count: Poisson error
    norms = np.array([r.grad_norm for r in rows if r.grad_norm is not None], dtype=float)
    norms = norms[len(norms) // 2:]
    if len(norms) > 2:
        var = float(norms.var(ddof=1))
        out["grad_norm_variance"] = Value(var, var * math.sqrt(2 / (len(norms) - 1)))  # the error of a sample variance
    warnings = sum(len(r.warnings) for r in rows)
    out["divergence_warnings"] = Value(float(warnings), math.sqrt(max(warnings, 1)))
    return out


def curve_points(rows: list[MetricsRow], key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) of each metrics row that has `key`."""
    return list(zip(*series(rows, key)))
