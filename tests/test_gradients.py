"""Every trainable parameter learns: for every shipped spec and variant (MoE with top-1 and
top-2 routing), one backward pass of the training objective gives each parameter of the trained
roles a non-zero gradient, the router included. The specs keep their structure (norms,
positions, attention kind, experts, LoRA placements) at tiny dimensions."""

from __future__ import annotations

import json
import re

import pytest
import torch

from builders.techniques import causal_lm_loss
from minimind_spec import build_graph, load_spec, resolve
from minimind_spec.engine import compile_graph
from minimind_spec.engine.trainability import set_trainable
from minimind_spec.graph import BASE_ROLES, ParamRole
from minimind_spec.loader import load_document

from .conftest import ROOT

SHIPPED = [ROOT / "spec" / "minimind.json", ROOT / "spec" / "larger_model.json",
           *sorted((ROOT / "spec" / "ablations").glob("*.json"))]
EXPERT = re.compile(r"model\.layers\.(\d+)\..*\.experts\.(\d+)\.")


def cases():
    for path in SHIPPED:
        data = load_document(path).data
        variants = [None, *data.get("backbone", {}).get("variants", [])]
        for variant in dict.fromkeys(variants):
            for top_k in ((1, 2) if variant == "MoE" or data.get("backbone", {}).get("build_variant") == "MoE" else (None,)):
                yield pytest.param(path, variant, top_k, id=f"{path.stem}-{variant or 'base'}-top{top_k or '-'}")


def tiny_version(path, top_k, tmp_path):
    hyperparams = load_document(path).data["hyperparams"]
    patch = {"d_model": 64, "n_layers": 2, "n_heads": 4, "seq_len": 16}  # the vocabulary stays: the teacher shares it
    if hyperparams.get("n_kv_heads") not in (None, hyperparams["n_heads"]):
        patch["n_kv_heads"] = 2  # keep grouped-query attention grouped
    if "max_position_embeddings" in hyperparams:
        patch["max_position_embeddings"] = None
    spec = {"extends": str(path), "hyperparams": patch}
    if top_k is not None:
        spec["moe"] = {"top_k": top_k, "expert_hidden": None}
    out = tmp_path / f"{path.stem}.json"
    out.write_text(json.dumps(spec))
    return out


@pytest.mark.parametrize("path, variant, top_k", list(cases()))
def test_every_trainable_parameter_gets_a_gradient(path, variant, top_k, tmp_path):
    resolved = resolve(load_spec(tiny_version(path, top_k, tmp_path)), variant)
    graph = build_graph(resolved)
    model = compile_graph(graph, seed=0)
    torch.manual_seed(0)
    with torch.no_grad():  # adapters as after a first step (at B = 0 the A matrices get no gradient, by design)
        for name, param in model.named_parameters():
            if name.endswith(".lora.B"):
                param.normal_(0, 0.02)
    role_sets = [BASE_ROLES] + ([frozenset({ParamRole.LORA})] if resolved.model.lora else [])
    for roles in role_sets:
        set_trainable(model, graph, roles)
        model.zero_grad(set_to_none=True)
        ids = torch.randint(0, resolved.model.vocab_size, (8, 16), generator=torch.Generator().manual_seed(1))
        out = model(ids)
        (causal_lm_loss(out.logits, ids) + out.aux_loss).backward()
        idle = set()
        if out.expert_counts is not None:  # an expert no token was routed to has nothing to learn from this batch
            idle = {(layer, e) for layer, row in enumerate(out.expert_counts.tolist()) for e, n in enumerate(row) if n == 0}
        silent = []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            expert = EXPERT.search(name)
            if expert and (int(expert.group(1)), int(expert.group(2))) in idle:
                continue
            if param.grad is None or not bool(param.grad.abs().sum() > 0):
                silent.append(name)
        assert not silent, f"{sorted(roles)}: no gradient reaches {silent[:6]}"
        if resolved.model.moe is not None and ParamRole.ROUTER in roles:
            assert any("router" in name or "gate." in name for name, p in model.named_parameters() if p.requires_grad)
