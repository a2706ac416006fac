"""The decode step's faster forms against the plain forward: the eager fast path and the
`torch.compile`d step give the plain path's greedy tokens and its logits to 1e-5 (fp32); int8
weight-only quantisation (`builders.inference.quant`) stores <= 0.3x the fp32 bytes, each
dequantised weight within half a step (scale / 2) of the original, logits close to fp32 and a
held-out perplexity within 1% of fp32 on a briefly trained tiny model; greedy decoding runs
through it (`generate(..., quant="int8")`)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from builders.inference.decode import DecodeStep, PackedLinear, packed_weights
from builders.inference.quant import Int8Weight, int8_linear, quantize_int8
from minimind_spec import compile_model, load_spec, resolve

from .conftest import TINY_SPEC, VOCAB, merge
from .helpers import randomize

GQA_UNTIED = {"hyperparams": {"n_kv_heads": 2, "tie_word_embeddings": False}, "backbone": {"attention_backend": "sdpa"}}
SUCCESSORS = 4  # the training language: each token is followed by one of 4 tokens, with these probabilities
SUCCESSOR_PROBS = torch.tensor([0.55, 0.25, 0.15, 0.05])


def build(tiny, patch, seed=1):
    model = compile_model(tiny(patch), seed=0)
    randomize(model, seed)
    return model.eval()


def step_logits(model, prompt, steps, fast=True, **options):
    """Logits (B, steps, V) of `steps` greedy decode steps after prefilling `prompt` (B, T):
    through `DecodeStep(**options)`, or the plain cached forward when not `fast`."""
    B, T = prompt.shape
    with torch.inference_mode():
        cache = model.new_cache(B, T + steps)
        logits = model(prompt, past_key_values=cache, use_cache=True).logits[:, -1]
        step = DecodeStep(model, cache, None, **options) if fast else None
        out = []
        for _ in range(steps):
            token = logits.argmax(-1)
            if step is None:
                logits = model(token[:, None], past_key_values=cache, use_cache=True).logits[:, -1]
            else:
                logits = step(token)
            out.append(logits)
    return torch.stack(out, 1)


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"])
def test_fast_step_matches_plain_forward(tiny, compile):
    # compiled: two compilations of the tiny step (batch 2, then a left-padded batch 3), 5-15 s on a 2-core CPU
    model = build(tiny, GQA_UNTIED)
    prompt = torch.randint(0, VOCAB, (2, 5))
    torch.testing.assert_close(step_logits(model, prompt, 12, compile=compile), step_logits(model, prompt, 12, fast=False),
                               atol=1e-5, rtol=1e-5)
    # another prompt and generation length: the cache length is dynamic, the compiled graph serves it as is
    longer = torch.randint(0, VOCAB, (2, 9))
    fast = model.generate(longer, max_new_tokens=24, compile_decode=compile)
    assert torch.equal(fast, model.generate(longer, max_new_tokens=24, fast_decode=False))
    batch = torch.randint(1, VOCAB, (3, 9))  # left-padded rows: per-row positions and an additive mask
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    mask[2, :2] = 0
    batch[mask == 0] = 0
    fast = model.generate(batch, attention_mask=mask, max_new_tokens=10, compile_decode=compile)
    assert torch.equal(fast, model.generate(batch, attention_mask=mask, max_new_tokens=10, fast_decode=False))


def test_int8_weights_round_within_half_a_step():
    generator = torch.Generator().manual_seed(0)
    weight = 0.02 * torch.randn(96, 64, generator=generator)
    weight[3] = 0.0  # an all-zero row
    weight[5, 7] = 1.5  # an outlier sets its row's scale
    q = quantize_int8(weight)
    assert q.qweight.dtype == torch.int8 and q.qweight.shape == weight.shape
    assert int(q.qweight.abs().max()) <= 127
    assert torch.equal(q.kernel_scale.float(), q.scale)  # the stored scale is exactly the one the CPU kernel applies
    error = (weight.double() - q.dequantize().double()).abs()
    assert bool((error <= q.scale.double()[:, None] / 2).all())
    assert torch.equal(q.dequantize()[3], torch.zeros(64))
    assert q.nbytes == 96 * 64 + 96 * (4 + 2)


def test_int8_product_matches_the_dequantised_weight():
    generator = torch.Generator().manual_seed(1)
    q = quantize_int8(0.05 * torch.randn(48, 64, generator=generator))
    x = torch.randn(3, 64, generator=generator)
    reference = x.double() @ q.dequantize().double().t()  # (3, 48)
    # CPU kernel: bf16 activations and output, so about 2^-8 of the largest output
    got = int8_linear(x, q)
    assert got.dtype == torch.float32
    assert float((got.double() - reference).abs().max()) <= 2 ** -7 * float(reference.abs().max())
    torch.testing.assert_close(int8_linear(x.t().contiguous().t(), q), got)  # a column-major input is copied first
    # dequantise-on-the-fly fallback (fp64 here; CUDA/MPS otherwise): exact up to fp64 rounding
    torch.testing.assert_close(int8_linear(x.double(), q), reference, atol=1e-12, rtol=1e-12)
    # an input width the CPU kernel cannot take (not a multiple of 16) uses the fallback
    narrow = quantize_int8(torch.randn(8, 24, generator=generator))
    x = torch.randn(2, 24, generator=generator)
    torch.testing.assert_close(int8_linear(x, narrow), x @ narrow.dequantize().t(), atol=1e-5, rtol=1e-5)


def test_int8_pack_bytes_and_weights(tiny):
    model = build(tiny, GQA_UNTIED)
    full, int8 = packed_weights(model), packed_weights(model, "int8")
    assert int8.quant == "int8" and all(linear.int8 is not None for linear in int8.linears())
    fp32_bytes = sum(linear.out_features * linear.in_features * 4 for linear in full.linears())
    assert int8.nbytes <= 0.3 * fp32_bytes  # 0.25 + 6 / (4 * in) per row: 0.27 at in = 64, 0.253 at the card's 512
    head = int8.lm_head.int8
    assert isinstance(head, Int8Weight)
    assert bool(((model.lm_head.weight - head.dequantize()).abs() <= head.scale[:, None] / 2 + 1e-7).all())
    assert packed_weights(model, "int8") is int8 and packed_weights(model) is full  # one pack per form, cached


def markov_tokens(n, length, generator, successors):
    """(n, length) token ids: each token drawn among its row of `successors` (V, 4) with SUCCESSOR_PROBS."""
    tokens = torch.empty(n, length, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, VOCAB, (n,), generator=generator)
    picks = torch.multinomial(SUCCESSOR_PROBS, n * length, replacement=True, generator=generator).view(n, length)
    for t in range(1, length):
        tokens[:, t] = successors[tokens[:, t - 1], picks[:, t]]
    return tokens


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """The tiny spec (GQA, tied head) trained for 120 AdamW steps on a 4-successor Markov language
    (the best perplexity possible is about 3.0; a fresh model's is about 128)."""
    path = tmp_path_factory.mktemp("int8") / "tiny.json"
    path.write_text(json.dumps(merge(TINY_SPEC, {"hyperparams": {"n_kv_heads": 2}})))
    torch.manual_seed(0)
    model = compile_model(resolve(load_spec(path)), seed=0)
    generator = torch.Generator().manual_seed(0)
    successors = torch.randint(0, VOCAB, (VOCAB, SUCCESSORS), generator=generator)
    data = markov_tokens(120 * 16, 32, generator, successors)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for batch in data.split(16):
        model(batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    held_out = markov_tokens(8, 32, torch.Generator().manual_seed(1), successors)
    return model.eval(), held_out


def decode_logits(model, tokens, quant):
    """Teacher-forced logits (B, L - 1, V) for tokens[:, 1:], every one from the decode step."""
    B, L = tokens.shape
    with torch.inference_mode():
        step = DecodeStep(model, model.new_cache(B, L), None, quant=quant)
        return torch.stack([step(tokens[:, i]) for i in range(L - 1)], 1)


def test_int8_perplexity_within_one_percent_of_fp32(trained_tiny):
    model, held_out = trained_tiny
    full, int8 = decode_logits(model, held_out, "none"), decode_logits(model, held_out, "int8")
    targets = held_out[:, 1:].reshape(-1)
    perplexity = {name: float(torch.exp(F.cross_entropy(logits.reshape(-1, VOCAB), targets)))
                  for name, logits in (("fp32", full), ("int8", int8))}
    assert perplexity["fp32"] < 8.0, perplexity  # trained: far below the vocabulary's 128
    assert abs(perplexity["int8"] / perplexity["fp32"] - 1) <= 0.01, perplexity  # measured: about 0.03%
    # logits: the largest difference within 5% of the logits' spread (measured: 2-3%)
    assert float((int8 - full).abs().max()) <= 0.05 * float(full.std()), float((int8 - full).abs().max())
    # and the decode step's fp32 logits are the plain forward's
    with torch.inference_mode():
        plain = model(held_out).logits[:, :-1]
    torch.testing.assert_close(full, plain, atol=1e-5, rtol=1e-5)


def test_generate_with_int8(trained_tiny):
    model, held_out = trained_tiny
    prompt = held_out[:2, :6]
    full = model.generate(prompt, max_new_tokens=16)
    int8 = model.generate(prompt, max_new_tokens=16, quant="int8")
    assert int8.shape == full.shape == (2, 22)
    assert torch.equal(int8[:, :6], prompt)
    assert int((int8 == full).sum()) >= 0.75 * full.numel()  # greedy continuations mostly agree
    with pytest.raises(ValueError, match="quant must be one of 'none', 'int8'; got 'int4'"):
        model.generate(prompt, max_new_tokens=4, quant="int4")
    with pytest.raises(ValueError, match="needs the fast decode path"):
        model.generate(prompt, max_new_tokens=4, quant="int8", fast_decode=False)


def test_packed_linear_batched_and_residual_forms():
    generator = torch.Generator().manual_seed(2)
    weight, x, residual = torch.randn(40, 24, generator=generator), torch.randn(5, 24, generator=generator), torch.randn(5, 40)
    expected = F.linear(x, weight)
    for kernel in ("auto", "mm", "linear"):
        linear = PackedLinear(weight, kernel=kernel)
        torch.testing.assert_close(linear(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(linear.add(residual, x), residual + expected, atol=1e-5, rtol=1e-5)
    assert PackedLinear(weight, kernel="mm").kind == "mm"
    assert PackedLinear(weight, "int8")(x).shape == (5, 40)
