"""MiniMind-3's architecture against Hugging Face's Qwen3 classes, the models MiniMind-3 itself
converts its checkpoints to: QK-norm (an RMSNorm over each head's queries and keys, before
RoPE), a head_dim set apart from d_model / n_heads, an explicit MLP size, and the MoE with
top-1 routing whose single weight is renormalised to 1 (`norm_topk_prob` with top_k 1).
Our state dict loads into `Qwen3ForCausalLM` / `Qwen3MoeForCausalLM` under the same names
(fused experts for transformers 5's Qwen3-MoE), and logits, loss and the KV-cached decode
agree to 1e-5 in fp32."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from minimind_spec import compile_model
from minimind_spec.config import ModelConfig

from .helpers import hf_rope_parameters, randomize

transformers = pytest.importorskip("transformers", reason="transformers is needed for the reference tests")

# MiniMind-3's shape at tiny size: 8 query heads over 4 KV heads, head_dim 12 (not 64 / 8 = 8), MLP 176
MINIMIND3 = {"hyperparams": {"n_heads": 8, "n_kv_heads": 4, "head_dim": 12, "qk_norm": True, "mlp_ratio": None,
                             "mlp_hidden": 176, "norm_eps": 1e-6, "rope_theta": 1e6}}
CASES = {
    "dense": (MINIMIND3, None),
    "dense-untied-mha": ({"hyperparams": {**MINIMIND3["hyperparams"], "n_kv_heads": None, "tie_word_embeddings": False}}, None),
    "moe-top1-renorm": ({**MINIMIND3, "moe": {"num_experts": 4, "top_k": 1, "norm_topk_prob": True, "aux_loss": True,
                                              "aux_loss_weight": 5e-4}}, "MoE"),
    "moe-top2": ({**MINIMIND3, "moe": {"num_experts": 4, "top_k": 2, "norm_topk_prob": False, "expert_hidden": 48}}, "MoE"),
}


def hf_qwen3(c: ModelConfig) -> Any:
    common: dict[str, Any] = dict(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.mlp_hidden, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim, hidden_act="silu",
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_word_embeddings,
        rope_parameters=hf_rope_parameters(c), attention_bias=False, use_sliding_window=False,
    )
    if c.moe is None:
        config = transformers.Qwen3Config(**common)
        model_class = transformers.Qwen3ForCausalLM
    else:
        config = transformers.Qwen3MoeConfig(**common, num_experts=c.moe.num_experts, num_experts_per_tok=c.moe.top_k,
                                             moe_intermediate_size=c.moe.expert_hidden, norm_topk_prob=c.moe.norm_topk_prob,
                                             decoder_sparse_step=1, mlp_only_layers=[])
        model_class = transformers.Qwen3MoeForCausalLM
    config._attn_implementation = "eager"
    return model_class(config).eval()


def qwen3_state_dict(ours: torch.nn.Module, c: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict as transformers 5 holds Qwen3 in memory: the same names, routed experts fused."""
    state = {k: v for k, v in ours.state_dict().items() if ".mlp.experts." not in k}
    if c.moe is not None:
        for i in range(c.n_layers):
            p = f"model.layers.{i}.mlp"
            experts = list(ours.get_submodule(p).experts)
            state[f"{p}.experts.gate_up_proj"] = torch.stack(
                [torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in experts]).detach()  # (E, 2I, D)
            state[f"{p}.experts.down_proj"] = torch.stack([e.down_proj.weight for e in experts]).detach()  # (E, D, I)
    return state


@pytest.mark.parametrize("patch, variant", CASES.values(), ids=CASES.keys())
def test_logits_loss_and_decode_match_hf_qwen3(tiny, patch, variant):
    resolved = tiny(patch, variant=variant)
    c = resolved.model
    assert c.qk_norm and c.head_dim == 12 and c.mlp_hidden == 176
    ours = compile_model(resolved, seed=0).eval()
    randomize(ours)
    assert ours.get_submodule("model.layers.0.self_attn.q_norm").weight.shape == (12,)
    hf = hf_qwen3(c)
    result = hf.load_state_dict(qwen3_state_dict(ours, c), strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if k != "lm_head.weight"], result
    if c.tie_word_embeddings:
        hf.tie_weights()
    input_ids = torch.randint(0, c.vocab_size, (2, 40))
    labels = input_ids.clone()
    labels[1, :6] = -100
    with torch.no_grad():
        mine = ours(input_ids, labels=labels)
        theirs = hf(input_ids=input_ids, labels=labels)
        torch.testing.assert_close(mine.logits, theirs.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.loss, theirs.loss, atol=1e-5, rtol=1e-5)
        # greedy decoding through each one's KV cache (ours: the packed decode fast path)
        prompt = input_ids[:1, :9]
        ours_tokens = ours.generate(prompt, max_new_tokens=12, temperature=0.0)
        hf_tokens = hf.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours_tokens.tolist() == hf_tokens.tolist()


def test_qk_norm_changes_the_output_and_trains(tiny):
    """The norms are on the path (a model without them differs) and get gradients."""
    plain = tiny({"hyperparams": {**MINIMIND3["hyperparams"], "qk_norm": False}})
    normed = tiny(MINIMIND3)
    a = compile_model(plain, seed=0)
    b = compile_model(normed, seed=0)
    assert sum(p.numel() for p in b.parameters()) - sum(p.numel() for p in a.parameters()) == 2 * 2 * 12
    ids = torch.randint(0, 128, (1, 16))
    with torch.no_grad():
        b.load_state_dict(a.state_dict(), strict=False)  # the same weights; the norms at their initial one
        for name in ("q_norm", "k_norm"):
            b.get_submodule(f"model.layers.0.self_attn.{name}").weight.fill_(1.5)
        assert not torch.allclose(a(ids).logits, b(ids).logits, atol=1e-3)
    out = b(ids, labels=ids)
    out.loss.backward()
    assert b.get_submodule("model.layers.1.self_attn.k_norm").weight.grad.abs().sum() > 0
