"""RoPE frequencies against Hugging Face's own RoPE functions (linear, yarn) and, for the
static NTK scaling HF does not have, against numbers computed by hand; learned absolute
positions; norms and activations of the ablations."""

from __future__ import annotations

import math

import pytest
import torch

from builders.positional import RotaryEmbedding, rope_inverse_frequencies
from minimind_spec import compile_model

transformers = pytest.importorskip("transformers", reason="transformers is needed for the reference tests")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402


def hf_inv_freq(rope_parameters: dict, head_dim: int = 64, max_pos: int = 4096) -> tuple[torch.Tensor, float]:
    config = transformers.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                                      max_position_embeddings=max_pos, rope_parameters=rope_parameters)
    if rope_parameters["rope_type"] == "default":
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        return LlamaRotaryEmbedding.compute_default_rope_parameters(config=config, device="cpu")
    return ROPE_INIT_FUNCTIONS[rope_parameters["rope_type"]](config, "cpu")


@pytest.mark.parametrize("factor,original,beta_fast,beta_slow,attention_factor", [
    (4.0, 1024, 32.0, 1.0, 0.1 * math.log(4.0) + 1), (16.0, 512, 16.0, 2.0, 1.5), (2.0, 4096, 32.0, 1.0, 1.0),
])
def test_yarn_matches_hf(factor, original, beta_fast, beta_slow, attention_factor):
    theirs, their_scale = hf_inv_freq({"rope_type": "yarn", "rope_theta": 1e6, "factor": factor,
                                       "original_max_position_embeddings": original, "beta_fast": beta_fast,
                                       "beta_slow": beta_slow, "attention_factor": attention_factor})
    ours, our_scale = rope_inverse_frequencies(head_dim=64, theta=1e6, scaling="yarn", factor=factor,
                                               original_max_position_embeddings=original, beta_fast=beta_fast,
                                               beta_slow=beta_slow, attention_factor=attention_factor)
    torch.testing.assert_close(ours, theirs, atol=0, rtol=1e-6)
    assert our_scale == pytest.approx(their_scale)


def test_linear_and_default_match_hf():
    for params, kwargs in (({"rope_type": "default", "rope_theta": 1e6}, {}),
                           ({"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}, {"scaling": "linear", "factor": 8.0})):
        theirs, _ = hf_inv_freq(params)
        ours, scale = rope_inverse_frequencies(head_dim=64, theta=1e6, **kwargs)
        torch.testing.assert_close(ours, theirs, atol=0, rtol=1e-6)
        assert scale == 1.0


def test_ntk_against_hand_computed_frequencies():
    # head_dim 8, theta 10000, factor 4: theta' = 10000 * 4^(8/6) = 63496.04...,
    # inv_freq_i = theta'^(-2i/8) for i = 0..3, written out by hand:
    expected = torch.tensor([1.0, 0.0630, 0.003969, 0.0002500])
    ours, scale = rope_inverse_frequencies(head_dim=8, theta=10000.0, scaling="ntk", factor=4.0)
    torch.testing.assert_close(ours, expected, rtol=2e-3, atol=0)
    assert scale == 1.0
    plain, _ = rope_inverse_frequencies(head_dim=8, theta=10000.0)
    assert ours[0] == plain[0] and (ours[1:] < plain[1:]).all()  # low frequencies stretched, the first kept


def test_rope_tables_cover_every_position_and_are_float32():
    rope = RotaryEmbedding(head_dim=16, max_position_embeddings=40, theta=1e4)
    cos, sin = rope(torch.arange(40))
    assert cos.shape == (1, 1, 40, 16) and cos.dtype == torch.float32
    torch.testing.assert_close(cos.square() + sin.square(), torch.ones_like(cos))
    torch.testing.assert_close(cos[0, 0, 0], torch.ones(16))


def test_absolute_positions_layernorm_gelu_model(tiny):
    resolved = tiny({"backbone": {"positional_encoding": "Absolute", "norm": "LayerNorm", "activation": "GELU"}})
    model = compile_model(resolved, seed=0).eval()
    assert model.model.rotary_emb is None
    assert model.model.embed_positions.weight.shape == (resolved.model.max_position_embeddings, resolved.model.d_model)
    tokens = torch.tensor([[5, 5, 5, 5]])
    with torch.no_grad():
        logits = model(tokens).logits
    assert not torch.allclose(logits[0, 0], logits[0, 1])  # positions are visible to the model
    with torch.no_grad():
        greedy = model.generate(tokens, max_new_tokens=6)
        no_cache = model.generate(tokens, max_new_tokens=6, use_cache=False)
    assert torch.equal(greedy, no_cache)
