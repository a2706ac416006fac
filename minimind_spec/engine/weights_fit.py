"""Do these weights fit this model? One exact check, shared by `import`, `build --weights`,
`train --init`, `generate` and `export`.

Weights fit when every tensor the model has is present with its shape and nothing else is
there. When they do not, the report lists every missing, unexpected and mis-shaped tensor,
and names the spec values that explain them: the model's shapes and the checkpoint's are both
read back into architecture facts (d_model from the embedding, head_dim from QK-norm or the
head count, the MLP width from gate_proj, experts by counting them, ...), and each fact that
differs is reported against the spec field a user would edit, e.g.
`hyperparams.qk_norm: spec false, checkpoint has q_norm weights` or
`hyperparams.d_model: spec 96, checkpoint 64`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

Shape = tuple[int, ...]
LAYER = re.compile(r"^model\.layers\.(\d+)\.")
SHOWN = 8  # tensors listed per kind; the rest are counted


def _shape(shapes: Mapping[str, Shape], key: str) -> Shape | None:
    return shapes.get(key)


def architecture_facts(shapes: Mapping[str, Shape]) -> dict[str, object]:
    """What a state dict's names and shapes say about the model it belongs to (only what can be told)."""
    facts: dict[str, object] = {}
    embed = _shape(shapes, "model.embed_tokens.weight")
    if embed is not None and len(embed) == 2:
        facts["vocab"], facts["d_model"] = embed
    layers = {int(m.group(1)) for key in shapes if (m := LAYER.match(key))}
    if layers:
        facts["n_layers"] = max(layers) + 1
    attn = "model.layers.0.self_attn"
    q_norm = _shape(shapes, f"{attn}.q_norm.weight")
    facts["qk_norm"] = q_norm is not None
    q, k = _shape(shapes, f"{attn}.q_proj.weight"), _shape(shapes, f"{attn}.k_proj.weight")
    if q_norm is not None:
        facts["head_dim"] = q_norm[0]
    if q is not None and k is not None:
        facts["q_width"], facts["kv_width"] = q[0], k[0]  # heads x head_dim: comparable with or without QK-norm
        if q_norm is not None:
            facts["n_heads"], facts["n_kv_heads"] = q[0] // q_norm[0], k[0] // q_norm[0]
    mlp = "model.layers.0.mlp"
    gate = _shape(shapes, f"{mlp}.gate_proj.weight")
    experts = {int(key.split(".")[5]) for key in shapes if key.startswith(f"{mlp}.experts.") and key.split(".")[5].isdigit()}
    fused = _shape(shapes, f"{mlp}.experts.gate_up_proj")
    if gate is not None:
        facts["mlp_hidden"], facts["experts"] = gate[0], 0
    elif experts:
        facts["experts"] = max(experts) + 1
        expert_gate = _shape(shapes, f"{mlp}.experts.0.gate_proj.weight")
        if expert_gate is not None:
            facts["expert_hidden"] = expert_gate[0]
    elif fused is not None:
        facts["experts"], facts["expert_hidden"] = fused[0], fused[1] // 2
    shared = {int(key.split(".")[5]) for key in shapes if key.startswith(f"{mlp}.shared_experts.")}
    if facts.get("experts"):
        facts["shared_experts"] = max(shared) + 1 if shared else 0
    facts["absolute_positions"] = "model.embed_positions.weight" in shapes
    facts["layernorm"] = "model.norm.bias" in shapes
    return facts


def _fact_problem(name: str, spec: object, found: object) -> str:
    """One differing fact, said against the spec field that sets it."""
    if name == "qk_norm":
        return "hyperparams.qk_norm: spec false, checkpoint has q_norm weights" if found else \
            "hyperparams.qk_norm: spec true, checkpoint has no q_norm weights"
    if name == "experts":
        if not spec:
            return f"the MoE variant: spec builds a dense MLP, checkpoint has {found} experts per layer (build with --variant MoE)"
        if not found:
            return f"the MoE variant: spec builds {spec} experts per layer, checkpoint has a dense MLP (build without --variant MoE)"
        return f"moe.num_experts: spec {spec}, checkpoint {found}"
    if name == "absolute_positions":
        return f"backbone.positional_encoding: spec {'Absolute' if spec else 'RoPE'}, checkpoint {'Absolute' if found else 'RoPE'}"
    if name == "layernorm":
        return f"backbone.norm: spec {'LayerNorm' if spec else 'RMSNorm'}, checkpoint {'LayerNorm' if found else 'RMSNorm'}"
    field = {"vocab": "hyperparams.vocab", "d_model": "hyperparams.d_model", "n_layers": "hyperparams.n_layers",
             "head_dim": "hyperparams.head_dim", "n_heads": "hyperparams.n_heads", "n_kv_heads": "hyperparams.n_kv_heads",
             "q_width": "hyperparams.n_heads x head_dim", "kv_width": "hyperparams.n_kv_heads x head_dim",
             "mlp_hidden": "hyperparams.mlp_hidden (or mlp_ratio x d_model)", "expert_hidden": "moe.expert_hidden",
             "shared_experts": "moe.num_shared_experts"}.get(name, name)
    return f"{field}: spec {spec}, checkpoint {found}"


@dataclass(frozen=True)
class FitReport:
    """How a checkpoint's tensors differ from a model's: by name, by shape, and the spec values behind it."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[tuple[str, Shape, Shape], ...]  # (name, the model's shape, the checkpoint's)
    explanations: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def message(self, source: str) -> str:
        """Every difference, each kind listed (the first few, then a count), the explaining spec values first."""
        lines = [f"{source} does not fit this spec's model"]
        if self.explanations:
            lines += ["the spec and the checkpoint differ in:"] + [f"  {e}" for e in self.explanations]

        def listed(title: str, items: list[str]) -> None:
            if items:
                more = f" ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
                lines.append(f"{title} ({len(items)}): " + ", ".join(items[:SHOWN]) + more)

        listed("mis-shaped tensors, spec vs checkpoint", [f"{name} {list(ours)} vs {list(theirs)}" for name, ours, theirs in self.mismatched])
        listed("missing from the checkpoint", list(self.missing))
        listed("in the checkpoint but not in the spec's model", list(self.unexpected))
        return "\n".join(lines)


def fit_report(expected: Mapping[str, Shape], found: Mapping[str, Shape]) -> FitReport:
    """Compare the model's tensor shapes (`expected`) with a checkpoint's (`found`)."""
    mismatched = tuple((k, tuple(expected[k]), tuple(found[k])) for k in expected if k in found and tuple(expected[k]) != tuple(found[k]))
    ours, theirs = architecture_facts(expected), architecture_facts(found)
    explanations = tuple(_fact_problem(name, ours.get(name), theirs[name]) for name in theirs
                         if name in ours and ours[name] != theirs[name])
    return FitReport(missing=tuple(k for k in expected if k not in found), unexpected=tuple(k for k in found if k not in expected),
                     mismatched=mismatched, explanations=explanations)
