"""Helpers shared by the back-end tests: build the Hugging Face twin of a compiled model and
fill a model with random (non-initial) values."""

from __future__ import annotations

from typing import Any

import torch

from minimind_spec.config import ModelConfig


def randomize(model: torch.nn.Module, seed: int = 1) -> None:
    """Give every parameter (norms and LoRA B included) random non-trivial values, so a test
    cannot pass because something is still at its initial one/zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))


def hf_rope_parameters(c: ModelConfig) -> dict[str, Any]:
    rs = c.rope_scaling
    if rs.kind == "none":
        return {"rope_type": "default", "rope_theta": c.rope_theta}
    if rs.kind == "linear":
        return {"rope_type": "linear", "rope_theta": c.rope_theta, "factor": rs.factor}
    if rs.kind == "yarn":
        return {"rope_type": "yarn", "rope_theta": c.rope_theta, "factor": rs.factor,
                "original_max_position_embeddings": rs.original_max_position_embeddings,
                "beta_fast": rs.beta_fast, "beta_slow": rs.beta_slow, "attention_factor": rs.attention_factor}
    raise AssertionError(f"HF has no static {rs.kind} RoPE")


def hf_llama(c: ModelConfig, attn: str = "eager") -> Any:
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.mlp_hidden, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, head_dim=c.head_dim, hidden_act="silu",
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_word_embeddings,
        rope_parameters=hf_rope_parameters(c), attention_bias=False, mlp_bias=False,
    )
    config._attn_implementation = attn
    return transformers.LlamaForCausalLM(config).eval()


def load_into_hf(ours: torch.nn.Module, hf: torch.nn.Module) -> None:
    result = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert not [k for k in result.missing_keys if "rotary" not in k], result.missing_keys


def hf_qwen2_moe(c: ModelConfig, attn: str = "eager") -> Any:
    """A Qwen2-MoE model shaped like our MoE build. Qwen2-MoE routes as we do (softmax,
    top-k, optional renormalisation); its single shared expert is sigmoid-gated, so
    `qwen2_moe_state_dict` maps our shared experts into it with the gate at sigmoid(0) = 1/2."""
    import transformers

    assert c.moe is not None
    shared = max(c.moe.num_shared_experts, 1) * c.moe.expert_hidden
    config = transformers.Qwen2MoeConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.mlp_hidden, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, hidden_act="silu",
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.norm_eps, tie_word_embeddings=c.tie_word_embeddings,
        rope_parameters=hf_rope_parameters(c), qkv_bias=False, decoder_sparse_step=1, mlp_only_layers=[],
        moe_intermediate_size=c.moe.expert_hidden, shared_expert_intermediate_size=shared,
        num_experts=c.moe.num_experts, num_experts_per_tok=c.moe.top_k, norm_topk_prob=c.moe.norm_topk_prob,
        use_sliding_window=False,
    )
    config._attn_implementation = attn
    return transformers.Qwen2MoeForCausalLM(config).eval()


def qwen2_moe_state_dict(ours: torch.nn.Module, c: ModelConfig) -> dict[str, torch.Tensor]:
    """Our MoE state dict in Qwen2-MoE's layout (fused expert tensors, one shared expert)."""
    assert c.moe is not None
    state = {k: v for k, v in ours.state_dict().items() if ".mlp." not in k}
    for i in range(c.n_layers):
        p = f"model.layers.{i}.mlp"
        layer = ours.get_submodule(p)
        state[f"{p}.gate.weight"] = layer.gate.weight.detach()
        state[f"{p}.experts.gate_up_proj"] = torch.stack(
            [torch.cat([e.gate_proj.weight, e.up_proj.weight], dim=0) for e in layer.experts]).detach()  # (E, 2I, D)
        state[f"{p}.experts.down_proj"] = torch.stack([e.down_proj.weight for e in layer.experts]).detach()  # (E, D, I)
        shared = list(layer.shared_experts)
        if shared:
            state[f"{p}.shared_expert.gate_proj.weight"] = torch.cat([s.gate_proj.weight for s in shared]).detach()
            state[f"{p}.shared_expert.up_proj.weight"] = torch.cat([s.up_proj.weight for s in shared]).detach()
            state[f"{p}.shared_expert.down_proj.weight"] = 2 * torch.cat([s.down_proj.weight for s in shared], dim=1).detach()
        else:
            hidden = c.moe.expert_hidden
            state[f"{p}.shared_expert.gate_proj.weight"] = torch.zeros(hidden, c.d_model)
            state[f"{p}.shared_expert.up_proj.weight"] = torch.zeros(hidden, c.d_model)
            state[f"{p}.shared_expert.down_proj.weight"] = torch.zeros(c.d_model, hidden)
        state[f"{p}.shared_expert_gate.weight"] = torch.zeros(1, c.d_model)  # sigmoid(0) = 1/2
    return state


def trl_dpo_loss(per_token: torch.Tensor, completion: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
                 loss_types: list[str], loss_weights: list[float], beta: float = 0.1) -> float:
    """trl's DPO loss (DPOTrainer._compute_loss) on a stand-in trainer whose model returns the given
    per-token log-probs (2 pairs, T - 1), chosen rows first and 0 outside the completion, as trl's model
    does, with precomputed reference log-probs; skips the test when trl is absent or its internals differ."""
    import types
    from collections import defaultdict

    import pytest

    trl = pytest.importorskip("trl")
    rows, length = completion.shape

    class Outputs:
        log_probs = per_token

        aux_loss = None

        def __getattr__(self, name: str) -> torch.Tensor:  # trl's other per-token statistics, for its metrics only
            return torch.zeros_like(per_token, dtype=torch.bool if "top1" in name else per_token.dtype)

    class Model(torch.nn.Module):
        def forward(self, **kwargs: Any) -> Outputs:
            return Outputs()

    class Accelerator:
        device = torch.device("cpu")

        def gather(self, x: torch.Tensor) -> torch.Tensor:
            return x

        gather_for_metrics = gather

    model = Model()
    trainer = types.SimpleNamespace(
        model=model, accelerator=Accelerator(), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0, loss_types=loss_types, loss_weights=loss_weights,
        beta=beta, label_smoothing=0.0, use_weighting=False, rpo_alpha=None, ref_model=None, args=types.SimpleNamespace(),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(rows, length, dtype=torch.long), "attention_mask": torch.ones(rows, length),
              "completion_mask": completion, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    try:
        return float(trl.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False))
    except (AttributeError, KeyError, TypeError) as exc:
        pytest.skip(f"trl {trl.__version__}'s DPOTrainer internals differ from the stand-in: {exc!r}")
