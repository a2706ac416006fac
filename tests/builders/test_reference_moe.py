"""MoE models against Hugging Face Qwen2-MoE, whose routing matches ours (softmax over the
router logits, top-k, optional renormalisation; shared experts added to every token).

Auxiliary loss: HF's `load_balancing_loss_func` counts each of the k choices as a token
fraction (its fractions sum to k) and pools all layers before the product; ours is
MiniMind's per-layer E * sum_e f_e P_e with assignment fractions summing to 1, summed over
layers and weighted. So per layer HF = k * ours, and the test checks
aux_ours == weight * sum_layers HF(layer) / k, with HF's function as the reference.
"""

from __future__ import annotations

import pytest
import torch

from minimind_spec import compile_model

from .helpers import hf_qwen2_moe, qwen2_moe_state_dict, randomize

transformers = pytest.importorskip("transformers", reason="transformers is needed for the reference tests")
from transformers.models.qwen2_moe.modeling_qwen2_moe import load_balancing_loss_func  # noqa: E402

CASES = {
    "renorm-top2": {"moe": {"num_experts": 4, "top_k": 2, "norm_topk_prob": True, "aux_loss": True, "aux_loss_weight": 0.1}},
    "no-renorm-shared": {"moe": {"num_experts": 4, "top_k": 2, "norm_topk_prob": False, "num_shared_experts": 2,
                                 "aux_loss": True, "aux_loss_weight": 0.01, "expert_hidden": 48},
                         "hyperparams": {"n_kv_heads": 2, "tie_word_embeddings": False}},
    "top1-of-8": {"moe": {"num_experts": 8, "top_k": 1, "norm_topk_prob": False, "aux_loss": True, "expert_hidden": 32}},
}


@pytest.mark.parametrize("patch", CASES.values(), ids=CASES.keys())
def test_moe_matches_hf_qwen2_moe(tiny, patch):
    resolved = tiny(patch, variant="MoE")
    c = resolved.model
    assert c.moe is not None
    ours = compile_model(resolved, seed=0).eval()
    randomize(ours)
    hf = hf_qwen2_moe(c)
    result = hf.load_state_dict(qwen2_moe_state_dict(ours, c), strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if "rotary" not in k], result

    input_ids = torch.randint(0, c.vocab_size, (2, 24))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :5] = 0
    for mask in (None, attention_mask):
        with torch.no_grad():
            mine = ours(input_ids, attention_mask=mask, labels=input_ids if mask is None else None)
            theirs = hf(input_ids=input_ids, attention_mask=mask, labels=input_ids if mask is None else None,
                        output_router_logits=mask is not None)
        real = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask.bool()
        torch.testing.assert_close(mine.logits[real], theirs.logits[real], atol=1e-5, rtol=1e-5)
        if mask is None:
            torch.testing.assert_close(mine.loss, theirs.loss, atol=1e-5, rtol=1e-5)
            continue
        router_logits = theirs.router_logits  # per layer (B*T, E)
        per_layer = [load_balancing_loss_func((logits,), c.moe.num_experts, c.moe.top_k, mask) for logits in router_logits]
        expected = c.moe.aux_loss_weight * sum(per_layer) / c.moe.top_k
        torch.testing.assert_close(mine.aux_loss, expected.to(mine.aux_loss.dtype), atol=1e-6, rtol=1e-5)
        # per-expert token counts (padding included: the experts did run on those rows)
        hf_counts = torch.stack([
            torch.bincount(logits.softmax(-1).topk(c.moe.top_k, dim=-1).indices.reshape(-1), minlength=c.moe.num_experts)
            for logits in router_logits])
        torch.testing.assert_close(mine.expert_counts, hf_counts)
        assert int(mine.expert_counts.sum()) == c.n_layers * input_ids.numel() * c.moe.top_k


def test_moe_aux_loss_off_and_gradients_flow(tiny):
    resolved = tiny({"moe": {"num_experts": 4, "top_k": 2, "aux_loss": False}}, variant="MoE")
    model = compile_model(resolved, seed=0)
    input_ids = torch.randint(0, resolved.model.vocab_size, (2, 16))
    out = model(input_ids, labels=input_ids)
    assert float(out.aux_loss) == 0.0
    resolved_on = tiny({"moe": {"num_experts": 4, "top_k": 2, "aux_loss": True, "aux_loss_weight": 0.5}}, variant="MoE")
    model_on = compile_model(resolved_on, seed=0)
    out = model_on(input_ids, labels=input_ids)
    assert float(out.aux_loss.detach()) > 0
    (out.loss + out.aux_loss).backward()
    router = model_on.get_submodule("model.layers.0.mlp.gate")
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    assert out.expert_counts.shape == (resolved_on.model.n_layers, 4)
