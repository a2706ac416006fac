"""The schedule against values worked out by hand, and the optimizer's decay groups against the graph."""

from __future__ import annotations

import math

import pytest
import torch

from minimind_spec import build_graph, load_spec, resolve
from minimind_spec.engine import compile_graph
from minimind_spec.engine.train.optim import build_optimizer, lr_factor
from minimind_spec.graph import ParamRole, params_with_roles


def test_warmup_then_cosine_to_the_floor():
    assert lr_factor(0, 10, 110, "cosine", 0.1) == pytest.approx(0.1)  # 1/10 of the way up
    assert lr_factor(9, 10, 110, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 110, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))  # 0.55
    assert lr_factor(110, 10, 110, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 10, 110, "cosine", 0.1) == pytest.approx(0.1)  # past the end: stays at the floor


def test_linear_and_constant():
    assert lr_factor(55, 5, 105, "linear", 0.2) == pytest.approx(1 - 0.8 * 0.5)
    assert lr_factor(3, 5, 105, "constant", 0.2) == pytest.approx(4 / 5)
    assert lr_factor(80, 5, 105, "constant", 0.2) == 1.0
    assert lr_factor(0, 0, 10, "cosine", 0.1) == 1.0  # no warmup: the peak at once


def test_no_decay_on_norms_and_embeddings(write_spec):
    resolved = resolve(load_spec(write_spec()))
    graph = build_graph(resolved)
    model = compile_graph(graph, seed=0)
    optimizer = build_optimizer(model, graph, resolved.training.optim)
    decay, no_decay = optimizer.param_groups
    assert sum(p.numel() for p in no_decay["params"]) == params_with_roles(graph, {ParamRole.NORM, ParamRole.EMBEDDING})
    assert sum(p.numel() for p in decay["params"]) == params_with_roles(graph, {ParamRole.ATTENTION, ParamRole.MLP})
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == resolved.training.optim.weight_decay
    assert isinstance(optimizer, torch.optim.AdamW) and decay["betas"] == resolved.training.optim.betas
