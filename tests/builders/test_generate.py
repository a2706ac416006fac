"""Generation: the static cache gives the same greedy tokens as re-running the whole
sequence, and as Hugging Face `generate` on the same weights; left-padded batches decode as
their rows do alone; sampling filters and the repetition penalty match HF's logits processors."""

from __future__ import annotations

import pytest
import torch

from builders.inference.generate import apply_repetition_penalty, filter_top_k_top_p
from minimind_spec import compile_model

from .helpers import hf_llama, load_into_hf, randomize

CASES = {
    "dense-gqa": ({"hyperparams": {"n_kv_heads": 2}}, None),
    "moe": ({"moe": {"num_experts": 4, "top_k": 2}}, "MoE"),
    "sdpa": ({"backbone": {"attention_backend": "sdpa"}}, None),
}


@pytest.mark.parametrize("patch,variant", CASES.values(), ids=CASES.keys())
def test_greedy_with_and_without_cache_agree(tiny, patch, variant):
    resolved = tiny(patch, variant)
    model = compile_model(resolved, seed=0)
    randomize(model)
    prompt = torch.randint(0, resolved.model.vocab_size, (2, 7))
    cached = model.generate(prompt, max_new_tokens=20)
    uncached = model.generate(prompt, max_new_tokens=20, use_cache=False)
    assert cached.shape == (2, 27)
    assert torch.equal(cached, uncached)


def test_greedy_matches_hf_generate(tiny):
    transformers = pytest.importorskip("transformers", reason="transformers is needed for the reference tests")
    resolved = tiny({"hyperparams": {"n_kv_heads": 2}})
    model = compile_model(resolved, seed=0)
    randomize(model)
    hf = hf_llama(resolved.model, attn="sdpa")
    load_into_hf(model, hf)
    prompt = torch.randint(0, resolved.model.vocab_size, (1, 6))
    ours = model.generate(prompt, max_new_tokens=16)
    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=16, min_new_tokens=16, pad_token_id=0)
    theirs = hf.generate(prompt, generation_config=config)
    assert torch.equal(ours, theirs)


def test_left_padded_batch_matches_rows_alone(tiny):
    resolved = tiny({"hyperparams": {"n_kv_heads": 2}, "backbone": {"attention_backend": "sdpa"}})
    model = compile_model(resolved, seed=0)
    randomize(model)
    short = torch.randint(1, resolved.model.vocab_size, (1, 4))
    long = torch.randint(1, resolved.model.vocab_size, (1, 9))
    batch = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), short], dim=1), long])
    mask = torch.ones_like(batch)
    mask[0, :5] = 0
    together = model.generate(batch, attention_mask=mask, max_new_tokens=12)
    alone_short = model.generate(short, max_new_tokens=12)
    alone_long = model.generate(long, max_new_tokens=12)
    assert torch.equal(together[0, 5:], alone_short[0])
    assert torch.equal(together[1], alone_long[0])


def test_eos_stops_and_pads_finished_rows(tiny):
    resolved = tiny({})
    model = compile_model(resolved, seed=0)
    randomize(model)
    prompt = torch.randint(0, resolved.model.vocab_size, (2, 5))
    free = model.generate(prompt, max_new_tokens=8)
    eos = int(free[0, 5])  # row 0 emits it first
    stopped = model.generate(prompt, max_new_tokens=8, eos_token_id=eos, pad_token_id=-1)
    assert torch.equal(stopped, model.generate(prompt, max_new_tokens=8, eos_token_id=eos, pad_token_id=-1, use_cache=False))
    assert stopped[0, 5] == eos
    assert (stopped[0, 6:] == -1).all()
    if (free[1, 5:] != eos).all():
        assert stopped.shape[1] == 13 and torch.equal(stopped[1], free[1])


def test_sampling_is_seeded_and_degenerates_to_greedy(tiny):
    resolved = tiny({})
    model = compile_model(resolved, seed=0)
    randomize(model)
    prompt = torch.randint(0, resolved.model.vocab_size, (2, 5))
    greedy = model.generate(prompt, max_new_tokens=8)
    top1 = model.generate(prompt, max_new_tokens=8, temperature=0.7, top_k=1)
    assert torch.equal(top1, greedy)
    a = model.generate(prompt, max_new_tokens=8, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(3))
    b = model.generate(prompt, max_new_tokens=8, temperature=1.0, top_p=0.9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_filters_and_penalty_match_hf_processors():
    processors = pytest.importorskip("transformers.generation.logits_process",
                                     reason="transformers is needed for the reference tests")
    logits = torch.randn(3, 50)
    tokens = torch.randint(0, 50, (3, 12))
    expected = processors.RepetitionPenaltyLogitsProcessor(1.3)(tokens, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits, tokens, 1.3), expected)
    expected = processors.TopKLogitsWarper(7)(tokens, logits.clone())
    assert torch.equal(filter_top_k_top_p(logits, 7, 1.0).isinf(), expected.isinf())
    expected = processors.TopPLogitsWarper(0.8)(tokens, logits.clone())
    assert torch.equal(filter_top_k_top_p(logits, 0, 0.8).isinf(), expected.isinf())


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.5}, "temperature must be >= 0"),
    ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"top_k": -1}, "top_k must be an integer >= 0"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
    ({"prompt": [[1, 2, 10**6]]}, "input_ids must lie in [0, "),
    ({"prompt": [[-3, 2]]}, "got token id -3"),
])
def test_arguments_out_of_range_are_named(tiny, kwargs, message):
    model = compile_model(tiny({}), seed=0)
    prompt = torch.tensor(kwargs.pop("prompt", [[1, 2, 3]]))
    with pytest.raises(ValueError) as error:
        model.generate(prompt, max_new_tokens=2, **kwargs)
    assert message in str(error.value)


def test_generation_builds_no_autograd_graph(tiny):
    model = compile_model(tiny({}), seed=0)
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3)
    assert not out.requires_grad and out.is_inference()  # decoding runs under inference mode
