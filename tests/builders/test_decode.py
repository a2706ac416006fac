"""The decode fast path (`builders.inference.decode`): packed, fused weights give the same tokens as
the plain cached forward and as re-running the whole sequence, for every layout it packs
(dense, GQA, untied head, unmerged LoRA, MoE falling back to its module, learned positions
with LayerNorm); the pack follows the parameters (an optimizer step repacks); sampling with a
seed and left-padded batches agree with the slow path; the state dict is untouched."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from builders.inference.decode import drop_packed_weights, packed_weights
from minimind_spec import compile_model

from .helpers import randomize

LORA = {"techniques": {"lora": {"enabled": True, "placements": ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
                                "rank": 4, "alpha": 16.0}}}
CASES = {
    "dense-tied": ({}, None),
    "gqa-sdpa": ({"hyperparams": {"n_kv_heads": 2}, "backbone": {"attention_backend": "sdpa"}}, None),
    "untied": ({"hyperparams": {"tie_word_embeddings": False, "n_kv_heads": 2}}, None),
    "lora-unmerged": (LORA | {"hyperparams": {"n_kv_heads": 2}}, None),
    "moe": ({"moe": {"num_experts": 4, "top_k": 2}}, "MoE"),
    "absolute-layernorm": ({"backbone": {"positional_encoding": "Absolute", "norm": "LayerNorm", "activation": "GELU"}}, None),
}


def build(tiny, patch, variant=None, seed=1):
    model = compile_model(tiny(patch, variant), seed=0)
    randomize(model, seed)
    return model


@pytest.mark.parametrize("patch,variant", CASES.values(), ids=CASES.keys())
def test_fast_greedy_matches_plain_cached_and_uncached(tiny, patch, variant):
    model = build(tiny, patch, variant)
    prompt = torch.randint(0, model.vocab_size, (2, 6))
    fast = model.generate(prompt, max_new_tokens=24)
    plain = model.generate(prompt, max_new_tokens=24, fast_decode=False)
    uncached = model.generate(prompt, max_new_tokens=24, use_cache=False)
    assert fast.shape == (2, 30)
    assert torch.equal(fast, plain)
    assert torch.equal(fast, uncached)


def test_fast_step_logits_match_plain_forward(tiny):
    model = build(tiny, LORA | {"hyperparams": {"n_kv_heads": 2, "tie_word_embeddings": False}})
    model.eval()
    prompt = torch.randint(0, model.vocab_size, (2, 5))
    from builders.inference.decode import DecodeStep

    with torch.inference_mode():
        plain_cache, fast_cache = model.new_cache(2, 16), model.new_cache(2, 16)
        model(prompt, past_key_values=plain_cache, use_cache=True)
        model(prompt, past_key_values=fast_cache, use_cache=True)
        step = DecodeStep(model, fast_cache, None)
        token = torch.tensor([3, 7])
        for _ in range(4):
            expected = model(token[:, None], past_key_values=plain_cache, use_cache=True).logits[:, -1]
            got = step(token)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            token = expected.argmax(-1)
    assert fast_cache.length == plain_cache.length == 9


def test_pack_follows_an_optimizer_step(tiny):
    model = build(tiny, {"hyperparams": {"n_kv_heads": 2}})
    prompt = torch.randint(0, model.vocab_size, (1, 6))
    model.generate(prompt, max_new_tokens=8)
    first = packed_weights(model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = torch.randint(0, model.vocab_size, (2, 12))
    model(batch, labels=batch).loss.backward()
    optimizer.step()
    after = model.generate(prompt, max_new_tokens=16)
    assert packed_weights(model) is not first

    fresh = copy.deepcopy(model)
    drop_packed_weights(fresh)
    assert torch.equal(after, fresh.generate(prompt, max_new_tokens=16, fast_decode=False))
    assert torch.equal(after, fresh.generate(prompt, max_new_tokens=16))


def test_pack_follows_merge_and_dtype(tiny):
    model = build(tiny, LORA)
    prompt = torch.randint(0, model.vocab_size, (1, 6))
    unmerged = model.generate(prompt, max_new_tokens=12)
    model.merge_lora()
    assert torch.equal(model.generate(prompt, max_new_tokens=12), unmerged)  # merged once, not twice
    model.unmerge_lora()
    assert torch.equal(model.generate(prompt, max_new_tokens=12), unmerged)
    model.to(torch.float64)
    assert packed_weights(model).lm_head(torch.zeros(1, model.lm_head.in_features, dtype=torch.float64)).dtype == torch.float64


def test_sampling_with_a_seed_matches_the_slow_path(tiny):
    model = build(tiny, {"hyperparams": {"n_kv_heads": 2}})
    prompt = torch.randint(0, model.vocab_size, (3, 5))
    options = dict(max_new_tokens=20, temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.3)
    fast = model.generate(prompt, generator=torch.Generator().manual_seed(5), **options)
    slow = model.generate(prompt, generator=torch.Generator().manual_seed(5), fast_decode=False, **options)
    assert torch.equal(fast, slow)


def test_left_padding_and_eos_match_the_slow_path(tiny):
    model = build(tiny, {"hyperparams": {"n_kv_heads": 2}, "backbone": {"attention_backend": "sdpa"}})
    batch = torch.randint(1, model.vocab_size, (3, 9))
    mask = torch.ones_like(batch)
    mask[0, :4] = 0
    mask[2, :2] = 0
    batch[mask == 0] = 0
    free = model.generate(batch, attention_mask=mask, max_new_tokens=10, fast_decode=False)
    eos = int(free[1, 11])
    options = dict(attention_mask=mask, max_new_tokens=10, eos_token_id=eos, pad_token_id=-1)
    assert torch.equal(model.generate(batch, **options), model.generate(batch, fast_decode=False, **options))
    assert torch.equal(model.generate(batch, attention_mask=mask, max_new_tokens=10), free)


def test_state_dict_and_modules_unchanged(tiny):
    model = build(tiny, LORA)
    names = list(model.state_dict())
    modules = [name for name, _ in model.named_modules()]
    model.generate(torch.randint(0, model.vocab_size, (1, 4)), max_new_tokens=4)
    assert list(model.state_dict()) == names
    assert [name for name, _ in model.named_modules()] == modules
    drop_packed_weights(model)
    assert "_packed_decode_weights" not in model.__dict__


def test_model_with_a_pack_copies_and_pickles(tiny):
    model = build(tiny, {})
    prompt = torch.randint(0, model.vocab_size, (1, 4))
    expected = model.generate(prompt, max_new_tokens=6)
    restored = pickle.loads(pickle.dumps(model))  # in memory only: nothing here reads a pickle from disk
    assert torch.equal(restored.generate(prompt, max_new_tokens=6), expected)
    assert torch.equal(copy.deepcopy(model).generate(prompt, max_new_tokens=6), expected)
