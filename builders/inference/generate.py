"""Text generation with the static KV cache: greedy or sampled (temperature, top-k, top-p),
repetition penalty, EOS stop, `max_new_tokens`, and batches with left padding.

The prompt is run once (prefill) into a cache sized prompt + max_new_tokens; each step then
feeds one token per sequence and reads logits of that position only. `use_cache=False`
re-runs the whole sequence every step (slow; it exists to check the cache). With the cache,
the steps after the prefill go through `builders.inference.decode.DecodeStep` (packed, fused weights;
see that module) unless `fast_decode=False`, which keeps the plain forward for every step. On the
fast path, `quant="int8"` decodes through per-row int8 copies of the linear weights
(`builders.inference.quant`; the prefill still runs the model's own weights) and
`compile_decode=True` runs the decode step through `torch.compile` (a one-time compilation per
process and shape family, then a faster step).

Decoding keeps SDPA off its cuDNN backend: the key length grows by one every step, and cuDNN
builds a new plan for each new shape (measured on an H100: 13 tokens/s instead of hundreds).
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .decode import DecodeStep, supports_fast_decode
from .protocol import CausalLM
from .quant import Quant, check_quant

DECODE_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def apply_repetition_penalty(logits: torch.Tensor, tokens: torch.Tensor, penalty: float) -> torch.Tensor:
    # logits: (B, V), tokens: (B, S) seen so far -> (B, V); seen logits divided (if > 0) or multiplied by penalty
    seen = logits.gather(1, tokens)  # (B, S)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, tokens, seen)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    # logits: (B, V) -> (B, V) with tokens outside the top-k / nucleus set to -inf
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_index = logits.sort(dim=-1, descending=True)  # (B, V)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, sorted_index, sorted_logits)
    return logits


def next_token(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
               generator: torch.Generator | None) -> torch.Tensor:
    # logits: (B, V) -> (B,) greedy when temperature <= 0
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = filter_top_k_top_p(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def check_generation_arguments(input_ids: torch.Tensor, vocab_size: int, *, max_new_tokens: int, temperature: float,
                               top_k: int, top_p: float, repetition_penalty: float) -> None:
    """ValueError for the first argument outside its range (ids must lie in [0, vocab_size))."""
    checks = (
        ("max_new_tokens", max_new_tokens >= 0, "an integer >= 0"),
        ("temperature", temperature >= 0.0, ">= 0 (0 is greedy decoding)"),
        ("top_k", top_k >= 0, "an integer >= 0 (0 keeps every token)"),
        ("top_p", 0.0 < top_p <= 1.0, "in (0, 1] (1 keeps every token)"),
        ("repetition_penalty", repetition_penalty > 0.0, "> 0 (1 is no penalty)"),
    )
    for name, ok, allowed in checks:
        if not ok:
            raise ValueError(f"{name} must be {allowed}; got {locals()[name]!r}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (batch, length) with length >= 1; got shape {tuple(input_ids.shape)}")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"input_ids must lie in [0, {vocab_size}) (the vocabulary); got token id {bad}")


@torch.inference_mode()
def generate(
    model: CausalLM, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
    repetition_penalty: float = 1.0, eos_token_id: int | None = None, pad_token_id: int = 0,
    use_cache: bool = True, fast_decode: bool = True, generator: torch.Generator | None = None,
    quant: Quant = "none", compile_decode: bool = False,
) -> torch.Tensor:
    """Continue `input_ids` (B, T), left-padded where `attention_mask` (B, T) has zeros.
    Returns (B, T + n) with n <= max_new_tokens; finished rows are filled with `pad_token_id`.
    A sampling argument out of its range, or a token id outside the vocabulary, is a ValueError
    naming the argument and its allowed range. `quant` ("none" or "int8") and `compile_decode`
    choose how the fast decode step runs (module docstring); with `fast_decode=False` or
    `use_cache=False`, or a model the fast path cannot run, `quant="int8"` is a ValueError
    rather than silently decoding in full precision."""
    check_generation_arguments(input_ids, model.model.embed_tokens.num_embeddings, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    quant = check_quant(quant)
    if quant != "none" and not (fast_decode and use_cache and supports_fast_decode(model)):
        raise ValueError(f"quant={quant!r} needs the fast decode path (fast_decode=True, use_cache=True, "
                         "a MiniMind-layout model)")
    B, T = input_ids.shape
    if T + max_new_tokens > model.max_position_embeddings:
        raise ValueError(f"{T} + {max_new_tokens} tokens exceed max_position_embeddings ({model.max_position_embeddings})")
    was_training = model.training
    model.eval()
    tokens = input_ids.new_empty(B, T + max_new_tokens)  # (B, T + N) preallocated output
    tokens[:, :T] = input_ids
    fed = tokens.clone()  # what the model saw: finished rows keep real tokens where `tokens` has padding
    mask = None
    if attention_mask is not None:
        mask = torch.ones(B, T + max_new_tokens, dtype=attention_mask.dtype, device=input_ids.device)
        mask[:, :T] = attention_mask
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    cache = model.new_cache(B, T + max_new_tokens) if use_cache else None
    step_input = input_ids  # (B, T) at prefill, then (B, 1)
    stepper: DecodeStep | None = None
    length = T
    with sdpa_kernel(DECODE_SDPA_BACKENDS):
        for _ in range(max_new_tokens):
            if stepper is not None:
                logits = stepper(step_input[:, 0])  # (B, V)
            elif use_cache:
                out = model(step_input, attention_mask=None if mask is None else mask[:, :length],
                            past_key_values=cache, use_cache=True, logits_to_keep=1)
                logits = out.logits[:, -1]  # (B, V)
                if fast_decode and supports_fast_decode(model):
                    assert cache is not None
                    stepper = DecodeStep(model, cache, mask, quant=quant, compile=compile_decode)
            else:
                out = model(fed[:, :length], attention_mask=None if mask is None else mask[:, :length], logits_to_keep=1)
                logits = out.logits[:, -1]  # (B, V)
            if repetition_penalty != 1.0:
                logits = apply_repetition_penalty(logits, fed[:, :length], repetition_penalty)
            new = next_token(logits, temperature, top_k, top_p, generator)  # (B,)
            fed[:, length] = new
            step_input = fed[:, length:length + 1]  # (B, 1)
            if eos_token_id is not None:
                new = torch.where(finished, torch.full_like(new, pad_token_id), new)
                finished |= new == eos_token_id
            tokens[:, length] = new
            length += 1
            if eos_token_id is not None and bool(finished.all()):
                break
    model.train(was_training)
    return tokens[:, :length]
