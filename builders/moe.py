"""Mixture of experts: a linear router, softmax, top-k selection with optional
renormalisation, N routed gated-MLP experts, optional always-on shared experts, and the
load-balancing auxiliary loss.

Dispatch is vectorised: the (token, choice) pairs are sorted by expert once, each expert
runs on one contiguous slice of gathered tokens, and a single `index_add_` scatters the
weighted results back. The only Python loop is over experts, never over tokens.

Auxiliary loss (MiniMind's, per layer, before the spec's weight):
    E * sum_e f_e * P_e
f_e: fraction of the T*k routing assignments that went to expert e (sums to 1), no gradient;
P_e: mean router probability of expert e over the tokens. Padding tokens are excluded when a
token mask is given. The model sums it over layers and multiplies by `aux_loss_weight`.
(Hugging Face's `load_balancing_loss_func` counts each of the k choices as a separate token
fraction, so its value per layer is k times this one, and it pools layers before the product.)

`expert_counts` (a non-persistent buffer) holds how many tokens each expert received in the
last forward, for monitoring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import GatedMLP


class Router(nn.Module):
    """The routing projection (the spec's `moe_gate`): weight (num_experts, d_model)."""

    def __init__(self, d_model: int, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.weight = nn.Parameter(torch.empty(num_experts, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, D) -> router logits (N, E)
        return F.linear(x, self.weight)


class MoE(nn.Module):
    experts: nn.ModuleList
    shared_experts: nn.ModuleList
    expert_counts: torch.Tensor  # (E,) int64 buffer: tokens per expert in the last forward

    def __init__(self, *, gate: Router, experts: list[GatedMLP], shared_experts: list[GatedMLP], top_k: int,
                 norm_topk_prob: bool, aux_loss_weight: float) -> None:
        super().__init__()
        if not 1 <= top_k <= len(experts):
            raise ValueError(f"top_k ({top_k}) must be between 1 and the number of experts ({len(experts)})")
        self.gate = gate
        self.experts = nn.ModuleList(experts)
        self.shared_experts = nn.ModuleList(shared_experts)
        self.num_experts = len(experts)
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self.aux_loss_weight = aux_loss_weight
        self.register_buffer("expert_counts", torch.zeros(self.num_experts, dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (B, T, D), token_mask: (B, T) 1 for real tokens -> (out (B, T, D), weighted aux loss ())
        B, T, D = x.shape
        E, k = self.num_experts, self.top_k
        flat = x.reshape(B * T, D)  # (N, D)
        probs = torch.softmax(self.gate(flat).float(), dim=-1)  # (N, E) fp32
        top_weights, top_experts = probs.topk(k, dim=-1)  # (N, k), (N, k)
        if self.norm_topk_prob:
            top_weights = top_weights / top_weights.sum(dim=-1, keepdim=True)

        assignment_expert = top_experts.reshape(-1)  # (N*k,)
        order = assignment_expert.argsort(stable=True)  # (N*k,) assignments grouped by expert
        token_of = order // k  # (N*k,) token index of each sorted assignment
        weight_of = top_weights.reshape(-1)[order].to(x.dtype)  # (N*k,)
        counts = torch.bincount(assignment_expert, minlength=E)  # (E,)
        with torch.no_grad():
            self.expert_counts.copy_(counts)
        gathered = flat[token_of]  # (N*k, D)
        outputs = []
        start = 0
        for expert, count in zip(self.experts, counts.tolist()):
            if count:
                outputs.append(expert(gathered[start:start + count]))  # (count, D)
            start += count
        weighted = torch.cat(outputs) * weight_of[:, None]  # (N*k, D)
        out = torch.zeros_like(flat).index_add_(0, token_of, weighted)  # (N, D)
        for shared in self.shared_experts:
            out = out + shared(flat)

        aux = flat.new_zeros((), dtype=torch.float32)
        if self.aux_loss_weight > 0:
            aux = self.aux_loss_weight * self.balance_loss(probs, assignment_expert, token_mask)
        return out.view(B, T, D), aux

    def balance_loss(self, probs: torch.Tensor, assignment_expert: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        # probs: (N, E) fp32, assignment_expert: (N*k,) -> unweighted loss ()
        E, k = self.num_experts, self.top_k
        valid = probs.new_ones(probs.shape[0]) if token_mask is None else token_mask.reshape(-1).to(probs.dtype)  # (N,)
        n_valid = valid.sum().clamp(min=1.0)
        assigned = probs.new_zeros(E).scatter_add_(0, assignment_expert, valid.repeat_interleave(k))  # (E,)
        fraction = assigned / (n_valid * k)  # (E,) sums to 1
        mean_prob = (probs * valid[:, None]).sum(dim=0) / n_valid  # (E,)
        return E * (fraction * mean_prob).sum()


def build_router(*, d_model: int, num_experts: int) -> Router:
    return Router(d_model, num_experts)


def build_moe(*, gate: Router, experts: list[GatedMLP], shared_experts: list[GatedMLP], top_k: int,
              norm_topk_prob: bool, aux_loss_weight: float) -> MoE:
    return MoE(gate=gate, experts=experts, shared_experts=shared_experts, top_k=top_k,
               norm_topk_prob=norm_topk_prob, aux_loss_weight=aux_loss_weight)
