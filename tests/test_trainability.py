"""Trainability by parameter role: `set_trainable(model, graph, roles)` makes exactly the
parameters of those roles train, the count equals what the graph reports for the same role
set (`params_with_roles`), and a backward pass gives gradients to those parameters only."""

from __future__ import annotations

import pytest
import torch

from minimind_spec import build_graph, load_spec, resolve
from minimind_spec.engine import compile_graph, parameters_by_role, set_trainable
from minimind_spec.graph import ALL_ROLES, BASE_ROLES, ParamRole, default_trainable_roles, graph_costs, params_with_roles

from .test_compile import variant_specs, write

ROLE_SETS = {
    "all": ALL_ROLES, "base": BASE_ROLES, "lora": {ParamRole.LORA}, "router": {ParamRole.ROUTER},
    "norms": {ParamRole.NORM}, "embeddings": {ParamRole.EMBEDDING}, "head-and-norms": {ParamRole.HEAD, ParamRole.NORM},
    "lora-and-router": {ParamRole.LORA, ParamRole.ROUTER},
}


def unique_params(model: torch.nn.Module, trainable: bool | None = None) -> int:
    seen: dict[int, torch.nn.Parameter] = {id(p): p for p in model.parameters()}  # parameters() dedups tied weights
    return sum(p.numel() for p in seen.values() if trainable is None or p.requires_grad == trainable)


@pytest.fixture(scope="module", params=variant_specs().keys())
def built(request, tmp_path_factory):
    data, variant = variant_specs()[request.param]
    resolved = resolve(load_spec(write(tmp_path_factory.mktemp(request.param), data)), variant)
    graph = build_graph(resolved)
    return resolved, graph, compile_graph(graph, seed=0)


@pytest.mark.parametrize("roles", ROLE_SETS.values(), ids=ROLE_SETS.keys())
def test_trainable_count_matches_the_graph(built, roles):
    resolved, graph, model = built
    summary = set_trainable(model, graph, roles)
    assert summary.trainable == unique_params(model, trainable=True) == params_with_roles(graph, roles)
    assert summary.total == unique_params(model) == graph_costs(graph, resolved.model).total_params
    costs = graph_costs(graph, resolved.model, trainable_roles=roles)
    assert costs.trainable_params == summary.trainable and costs.frozen_params == summary.total - summary.trainable


def test_roles_partition_the_parameters(built):
    _, graph, model = built
    by_role = parameters_by_role(model, graph)
    flat = [id(p) for params in by_role.values() for p in params]
    assert len(flat) == len(set(flat)) == len(list(model.parameters()))


def test_the_default_is_the_adapters_under_lora_else_everything(built):
    resolved, graph, model = built
    expected = {ParamRole.LORA} if resolved.model.lora is not None else BASE_ROLES
    assert default_trainable_roles(graph) == expected


def test_only_the_chosen_role_gets_gradients(tmp_path):
    data, variant = variant_specs()["moe-lora-shared"]
    resolved = resolve(load_spec(write(tmp_path, data)), variant)
    graph = build_graph(resolved)
    model = compile_graph(graph, seed=0, trainable_roles={ParamRole.ROUTER})
    input_ids = torch.randint(0, resolved.model.vocab_size, (2, 16))
    out = model(input_ids, labels=input_ids)
    (out.loss + out.aux_loss).backward()
    routers = {id(p) for p in parameters_by_role(model, graph)[ParamRole.ROUTER]}
    for name, param in model.named_parameters():
        if id(param) in routers:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
