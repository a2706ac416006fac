"""Attention backends agree with each other (eager is the reference formula; sdpa and the
flash-attn2 fallback must match it), on causal, GQA, padded and cached inputs."""

from __future__ import annotations

import pytest
import torch

import builders.attention as attention
from minimind_spec import compile_model

from .helpers import randomize


def with_backend(model: torch.nn.Module, backend: str) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, attention.Attention):
            module.backend = backend
    return model


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_eager_and_sdpa_agree(tiny, n_kv_heads):
    resolved = tiny({"hyperparams": {"n_kv_heads": n_kv_heads}})
    model = compile_model(resolved, seed=0).eval()
    randomize(model)
    input_ids = torch.randint(0, resolved.model.vocab_size, (3, 33))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :9] = 0
    with torch.no_grad():
        for mask in (None, attention_mask):
            eager = with_backend(model, "eager")(input_ids, attention_mask=mask).logits
            sdpa = with_backend(model, "sdpa")(input_ids, attention_mask=mask).logits
            torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_chunked_prefill_through_the_cache_matches_one_pass(tiny, backend):
    resolved = tiny({"hyperparams": {"n_kv_heads": 2}})
    model = with_backend(compile_model(resolved, seed=0).eval(), backend)
    randomize(model)
    input_ids = torch.randint(0, resolved.model.vocab_size, (2, 24))
    with torch.no_grad():
        full = model(input_ids).logits
        cache = model.new_cache(2, 32)
        parts = [model(input_ids[:, a:b], past_key_values=cache, use_cache=True).logits
                 for a, b in ((0, 10), (10, 11), (11, 24))]
    assert cache.length == 24
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_flash_attn2_falls_back_to_sdpa_with_one_notice(tiny, monkeypatch, caplog, recwarn):
    monkeypatch.setattr(attention, "_NOTICES_GIVEN", set())
    resolved = tiny({"backbone": {"attention_backend": "flash-attn2"}})
    model = compile_model(resolved, seed=0).eval()
    assert all(m.backend == "flash-attn2" for m in model.modules() if isinstance(m, attention.Attention))
    input_ids = torch.randint(0, resolved.model.vocab_size, (1, 16))
    with caplog.at_level("INFO", logger="builders.attention"):
        with torch.no_grad():
            flash = model(input_ids).logits
            model(input_ids)
    assert len([r for r in caplog.records if "using PyTorch SDPA" in r.getMessage()]) == 1  # once, not per layer or call
    assert not [w for w in recwarn if "SDPA" in str(w.message)]  # a log line, not a Python warning
    with torch.no_grad():
        sdpa = with_backend(model, "sdpa")(input_ids).logits
    torch.testing.assert_close(flash, sdpa)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_backends_agree_on_cuda_bf16(tiny):
    resolved = tiny({"hyperparams": {"n_kv_heads": 2}})
    model = compile_model(resolved, device="cuda", seed=0).eval()
    randomize(model)
    model.to(torch.bfloat16)
    input_ids = torch.randint(0, resolved.model.vocab_size, (2, 64), device="cuda")
    with torch.no_grad():
        eager = with_backend(model, "eager")(input_ids).logits.float()
        sdpa = with_backend(model, "sdpa")(input_ids).logits.float()
        flash = with_backend(model, "flash-attn2")(input_ids).logits.float()
    torch.testing.assert_close(sdpa, eager, atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(flash, eager, atol=3e-2, rtol=3e-2)


def test_attention_dropout_only_in_training(tiny):
    resolved = tiny({"hyperparams": {"dropout": 0.5}})
    model = compile_model(resolved, seed=0)
    input_ids = torch.randint(0, resolved.model.vocab_size, (1, 16))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, model(input_ids).logits)
        model.train()
        assert not torch.allclose(model(input_ids).logits, model(input_ids).logits)
