"""Dense models against Hugging Face `LlamaForCausalLM`: same config, our state dict loaded
into theirs, logits (fp32, atol 1e-5) and loss compared. Covers MHA and GQA, tied and
untied heads, and RoPE without scaling and with the scalings HF implements (linear, yarn)."""

from __future__ import annotations

import pytest
import torch

from minimind_spec import compile_model
from .helpers import hf_llama, load_into_hf, randomize

transformers = pytest.importorskip("transformers", reason="transformers is needed for the reference tests")


CASES = {
    "mha-tied": {},
    "gqa-untied": {"hyperparams": {"n_kv_heads": 2, "tie_word_embeddings": False}},
    "mqa": {"hyperparams": {"n_kv_heads": 1}},
    "rope-linear": {"hyperparams": {"rope_scaling": {"type": "linear", "factor": 4.0}}},
    "rope-yarn": {"hyperparams": {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}}},
    "rope-yarn-betas": {"hyperparams": {"n_kv_heads": 2, "rope_scaling": {
        "type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "beta_fast": 16.0, "beta_slow": 2.0,
        "attention_factor": 1.3}}},
}


@pytest.mark.parametrize("patch", CASES.values(), ids=CASES.keys())
def test_logits_and_loss_match_hf_llama(tiny, patch):
    resolved = tiny(patch)
    ours = compile_model(resolved, seed=0).eval()
    randomize(ours)
    hf = hf_llama(resolved.model)
    load_into_hf(ours, hf)
    T = min(resolved.model.max_position_embeddings, 96)
    input_ids = torch.randint(0, resolved.model.vocab_size, (2, T))
    labels = input_ids.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        mine = ours(input_ids, labels=labels)
        theirs = hf(input_ids=input_ids, labels=labels)
    torch.testing.assert_close(mine.logits, theirs.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.loss, theirs.loss, atol=1e-5, rtol=1e-5)
    assert float(mine.aux_loss) == 0.0


def test_padding_mask_matches_hf(tiny):
    resolved = tiny({"hyperparams": {"n_kv_heads": 2}, "backbone": {"attention_backend": "sdpa"}})
    ours = compile_model(resolved, seed=0).eval()
    randomize(ours)
    hf = hf_llama(resolved.model, attn="sdpa")
    load_into_hf(ours, hf)
    input_ids = torch.randint(0, resolved.model.vocab_size, (3, 20))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :7] = 0  # left padding
    attention_mask[2, :1] = 0
    with torch.no_grad():
        mine = ours(input_ids, attention_mask=attention_mask).logits
        theirs = hf(input_ids=input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    torch.testing.assert_close(mine[real], theirs[real], atol=1e-5, rtol=1e-5)


def test_gradients_match_hf(tiny):
    resolved = tiny({"hyperparams": {"n_kv_heads": 2, "tie_word_embeddings": False}})
    ours = compile_model(resolved, seed=0)
    randomize(ours)
    hf = hf_llama(resolved.model)
    load_into_hf(ours, hf)
    input_ids = torch.randint(0, resolved.model.vocab_size, (2, 32))
    ours(input_ids, labels=input_ids).loss.backward()
    hf(input_ids=input_ids, labels=input_ids).loss.backward()
    hf_grads = {n: p.grad for n, p in hf.named_parameters()}
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, hf_grads[name], atol=1e-5, rtol=1e-4, msg=name)
