"""The Hugging Face architecture that computes a model exactly, and its weights in that layout.

- Dense RoPE / RMSNorm / SiLU models are `LlamaForCausalLM`: our parameter names are Llama's,
  so the weights need no change.
- MoE models of that family are `Qwen2MoeForCausalLM`, whose routing is ours exactly (softmax
  over the router logits, top-k, optional renormalisation): each layer's experts are fused
  into `experts.gate_up_proj` (E, 2I, D) and `experts.down_proj` (E, D, I); Qwen2-MoE's one
  shared expert is sigmoid-gated, so our shared experts are concatenated into it with its gate
  at sigmoid(0) = 1/2 and the down projection doubled (zeros when there is none).
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


def hf_mismatches(c: ModelConfig) -> list[str]:
    """Why no Hugging Face class computes this model exactly (empty when one does)."""
    found = []
    if c.norm != "RMSNorm":
        found.append(f"norm {c.norm} (Llama and Qwen2-MoE use RMSNorm)")
    if c.positional_encoding != "RoPE":
        found.append(f"positional_encoding {c.positional_encoding} (they use RoPE)")
    if c.activation != "SiLU":
        found.append(f"activation {c.activation} (they use SiLU)")
    return found


def hf_architecture(c: ModelConfig) -> str | None:
    """'llama', 'qwen2_moe', or None when no HF class computes this model exactly."""
    if hf_mismatches(c):
        return None
    return "llama" if c.moe is None else QWEN2_MOE


def qwen2_moe_keys(c: ModelConfig) -> dict[str, Any]:
    """The Qwen2-MoE config keys beyond the Llama ones."""
    assert c.moe is not None
    return {"architectures": ["Qwen2MoeForCausalLM"], "model_type": QWEN2_MOE, "qkv_bias": False, "decoder_sparse_step": 1,
            "mlp_only_layers": [], "moe_intermediate_size": c.moe.expert_hidden,
            "shared_expert_intermediate_size": max(c.moe.num_shared_experts, 1) * c.moe.expert_hidden,
            "num_experts": c.moe.num_experts, "num_experts_per_tok": c.moe.top_k, "norm_topk_prob": c.moe.norm_topk_prob,
            "use_sliding_window": False, "output_router_logits": False, "router_aux_loss_coef": 0.0}


def to_hf(state: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict in the layout of `hf_architecture(c)`."""
    if c.moe is None:
        return dict(state)
    out = {k: v for k, v in state.items() if ".mlp." not in k}
    E, S, hidden = c.moe.num_experts, c.moe.num_shared_experts, c.moe.expert_hidden
    for i in range(c.n_layers):
        p = f"model.layers.{i}.mlp"
        out[f"{p}.gate.weight"] = state[f"{p}.gate.weight"]
        out[f"{p}.experts.gate_up_proj"] = torch.stack([torch.cat([state[f"{p}.experts.{e}.gate_proj.weight"],
                                                                    state[f"{p}.experts.{e}.up_proj.weight"]]) for e in range(E)])
        out[f"{p}.experts.down_proj"] = torch.stack([state[f"{p}.experts.{e}.down_proj.weight"] for e in range(E)])
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
    """The inverse of `to_hf`, for a model whose state dict has the keys `expected` (the number
    of experts, their width and the shared experts are read off the tensors and the keys)."""
    out = {k: v for k, v in state.items() if ".mlp." not in k or not k.split(".mlp.")[1].startswith(("experts.", "shared_expert"))}
    for key in [k for k in state if k.endswith(".mlp.experts.gate_up_proj")]:
        p = key[: -len(".experts.gate_up_proj")]
        gate_up, down = state[key], state[f"{p}.experts.down_proj"]  # (E, 2I, D), (E, D, I)
        hidden = gate_up.shape[1] // 2
        for e in range(gate_up.shape[0]):
            out[f"{p}.experts.{e}.gate_proj.weight"], out[f"{p}.experts.{e}.up_proj.weight"] = gate_up[e].split(hidden)
            out[f"{p}.experts.{e}.down_proj.weight"] = down[e]
        shared = sorted({int(k[len(p) + 16:].split(".")[0]) for k in expected if k.startswith(f"{p}.shared_experts.")})
        for s in shared:
            rows = slice(s * hidden, (s + 1) * hidden)
            out[f"{p}.shared_experts.{s}.gate_proj.weight"] = state[f"{p}.shared_expert.gate_proj.weight"][rows]
            out[f"{p}.shared_experts.{s}.up_proj.weight"] = state[f"{p}.shared_expert.up_proj.weight"][rows]
            out[f"{p}.shared_experts.{s}.down_proj.weight"] = state[f"{p}.shared_expert.down_proj.weight"][:, rows] / 2
    return out


def in_hf_layout(state: dict[str, torch.Tensor]) -> bool:
    return any(k.endswith(".experts.gate_up_proj") for k in state)
