"""The Hugging Face architecture that computes a model exactly, and its weights in that layout.

- Dense RoPE / RMSNorm / SiLU models are `LlamaForCausalLM`: our parameter names are Llama's,
  so the weights need no change. With QK-norm (MiniMind-3) they are `Qwen3ForCausalLM`, whose
  `self_attn.q_norm` / `k_norm` are ours by name and by arithmetic (RMSNorm over head_dim, before RoPE).
- MoE models of that family are `Qwen2MoeForCausalLM`, whose routing is ours exactly (softmax
  over the router logits, top-k, optional renormalisation). Its checkpoints name each routed
  expert as we do (`mlp.experts.{e}.gate_proj.weight`, ...); its one shared expert is
  sigmoid-gated, so our shared experts are concatenated into it with its gate at sigmoid(0) =
  1/2 and the down projection doubled (zeros when there is none). With QK-norm they are
  `Qwen3MoeForCausalLM` (the same routing and expert names, no shared expert: a QK-norm MoE
  with shared experts has no HF class).
- Anything else (LayerNorm, absolute positions, GELU/ReLU, ...) has no exact equivalent:
  `hf_architecture` says which setting is the mismatch, and no HF-named model is written.
`to_hf` and `from_hf` convert state dicts both ways, so a model directory in the HF layout
still loads in this package (`export.load_weights_into` recognises it by its fused expert tensors).
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import ModelConfig
from ..errors import InputError

QWEN2_MOE = "qwen2_moe"
QWEN3 = "qwen3"
QWEN3_MOE = "qwen3_moe"
HF_CLASSES = {"llama": "LlamaForCausalLM", QWEN2_MOE: "Qwen2MoeForCausalLM", QWEN3: "Qwen3ForCausalLM",
              QWEN3_MOE: "Qwen3MoeForCausalLM"}


def hf_mismatches(c: ModelConfig) -> list[str]:
    """Why no Hugging Face class computes this model exactly (empty when one does)."""
    found = []
    if c.norm != "RMSNorm":
        found.append(f"norm {c.norm} (Llama and Qwen2-MoE use RMSNorm)")
    if c.positional_encoding != "RoPE":
        found.append(f"positional_encoding {c.positional_encoding} (they use RoPE)")
    if c.activation != "SiLU":
        found.append(f"activation {c.activation} (they use SiLU)")
    if c.qk_norm and c.moe is not None and c.moe.num_shared_experts:
        found.append(f"qk_norm with {c.moe.num_shared_experts} shared experts (Qwen3-MoE has QK-norm but no shared expert; "
                     "Qwen2-MoE has a shared expert but no QK-norm)")
    return found


def hf_architecture(c: ModelConfig) -> str | None:
    """'llama', 'qwen3', 'qwen2_moe', 'qwen3_moe', or None when no HF class computes this model exactly."""
    if hf_mismatches(c):
        return None
    if c.moe is None:
        return QWEN3 if c.qk_norm else "llama"
    return QWEN3_MOE if c.qk_norm else QWEN2_MOE


def qwen3_keys(c: ModelConfig) -> dict[str, Any]:
    """The Qwen3 (dense) or Qwen3-MoE config keys beyond the Llama ones."""
    keys: dict[str, Any] = {"use_sliding_window": False, "sliding_window": None, "max_window_layers": c.n_layers,
                            "layer_types": ["full_attention"] * c.n_layers}
    if c.moe is None:
        return {"architectures": [HF_CLASSES[QWEN3]], "model_type": QWEN3, **keys}
    return {"architectures": [HF_CLASSES[QWEN3_MOE]], "model_type": QWEN3_MOE, **keys, "decoder_sparse_step": 1,
            "mlp_only_layers": [], "moe_intermediate_size": c.moe.expert_hidden, "num_experts": c.moe.num_experts,
            "num_experts_per_tok": c.moe.top_k, "norm_topk_prob": c.moe.norm_topk_prob, "output_router_logits": False,
            "router_aux_loss_coef": 0.0}


def qwen2_moe_keys(c: ModelConfig) -> dict[str, Any]:
    """The Qwen2-MoE config keys beyond the Llama ones."""
    assert c.moe is not None
    return {"architectures": ["Qwen2MoeForCausalLM"], "model_type": QWEN2_MOE, "qkv_bias": False, "decoder_sparse_step": 1,
            "mlp_only_layers": [], "moe_intermediate_size": c.moe.expert_hidden,
            "shared_expert_intermediate_size": max(c.moe.num_shared_experts, 1) * c.moe.expert_hidden,
            "num_experts": c.moe.num_experts, "num_experts_per_tok": c.moe.top_k, "norm_topk_prob": c.moe.norm_topk_prob,
            "use_sliding_window": False, "output_router_logits": False, "router_aux_loss_coef": 0.0}


def to_hf(state: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict in the checkpoint layout of `hf_architecture(c)`. Routed experts already
    carry Qwen2-MoE's checkpoint names (`mlp.experts.{e}.gate_proj.weight`, ...); the shared
    experts become its one gated shared expert."""
    if c.moe is None or c.qk_norm:  # Llama, Qwen3 and Qwen3-MoE name every tensor as we do
        return dict(state)
    out = {k: v for k, v in state.items() if ".shared_experts." not in k}
    S, hidden = c.moe.num_shared_experts, c.moe.expert_hidden
    for i in range(c.n_layers):
        p = f"model.layers.{i}.mlp"
        if S:
            out[f"{p}.shared_expert.gate_proj.weight"] = torch.cat([state[f"{p}.shared_experts.{s}.gate_proj.weight"] for s in range(S)])
            out[f"{p}.shared_expert.up_proj.weight"] = torch.cat([state[f"{p}.shared_experts.{s}.up_proj.weight"] for s in range(S)])
            out[f"{p}.shared_expert.down_proj.weight"] = 2 * torch.cat(
                [state[f"{p}.shared_experts.{s}.down_proj.weight"] for s in range(S)], dim=1)
        else:
            out[f"{p}.shared_expert.gate_proj.weight"] = torch.zeros(hidden, c.d_model)
            out[f"{p}.shared_expert.up_proj.weight"] = torch.zeros(hidden, c.d_model)
            out[f"{p}.shared_expert.down_proj.weight"] = torch.zeros(c.d_model, hidden)
        out[f"{p}.shared_expert_gate.weight"] = torch.zeros(1, c.d_model)  # sigmoid(0) = 1/2
    return out


def from_hf(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """The inverse of `to_hf`, for a model whose state dict has the keys `expected`; also reads
    the fused expert tensors (`experts.gate_up_proj`, `experts.down_proj`) transformers 5 keeps
    in memory. A shared-expert gate other than zero (trained elsewhere) has no equivalent here:
    refused, never silently halved."""
    out = {k: v for k, v in state.items()
           if not k.endswith((".experts.gate_up_proj", ".experts.down_proj", ".shared_expert_gate.weight"))
           and ".mlp.shared_expert." not in k}
    for key in [k for k in state if k.endswith(".mlp.experts.gate_up_proj")]:
        p = key[: -len(".experts.gate_up_proj")]
        gate_up, down = state[key], state[f"{p}.experts.down_proj"]  # (E, 2I, D), (E, D, I)
        for e in range(gate_up.shape[0]):
            out[f"{p}.experts.{e}.gate_proj.weight"], out[f"{p}.experts.{e}.up_proj.weight"] = gate_up[e].split(gate_up.shape[1] // 2)
            out[f"{p}.experts.{e}.down_proj.weight"] = down[e]
    for key in [k for k in state if k.endswith(".mlp.shared_expert_gate.weight")]:
        p = key[: -len(".shared_expert_gate.weight")]
        if bool(state[key].any()):
            raise InputError(f"{key} is not zero: a learned shared-expert gate has no equivalent in minimind-spec's MoE")
        shared = sorted({int(k[len(p) + 16:].split(".")[0]) for k in expected if k.startswith(f"{p}.shared_experts.")})
        if not shared:
            continue
        hidden = state[f"{p}.shared_expert.gate_proj.weight"].shape[0] // len(shared)
        for s in shared:
            rows = slice(s * hidden, (s + 1) * hidden)
            out[f"{p}.shared_experts.{s}.gate_proj.weight"] = state[f"{p}.shared_expert.gate_proj.weight"][rows]
            out[f"{p}.shared_experts.{s}.up_proj.weight"] = state[f"{p}.shared_expert.up_proj.weight"][rows]
            out[f"{p}.shared_experts.{s}.down_proj.weight"] = state[f"{p}.shared_expert.down_proj.weight"][:, rows] / 2
    return out


def in_hf_layout(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is a Qwen2-MoE checkpoint (its gated shared expert, or fused experts)."""
    return any(k.endswith((".mlp.shared_expert_gate.weight", ".experts.gate_up_proj")) for k in state)
