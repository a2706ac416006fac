"""The module graph: typed IR (`ir`), its construction from a resolved config (`build`),
invariants (`checks`), costs (`costs`) and the declared-vs-compiled comparison (`declared`)."""

from .build import build_graph, edge_kind, graph_to_json, node, nodes, shape
from .checks import check_graph
from .costs import Costs, default_trainable_roles, graph_costs, params_with_roles
from .declared import check_declared
from .ir import (
    ALL_ROLES, BASE_ROLES, INPUT_ID, MERGE_OPS, OUTPUT_ID, EdgeKind, MergePoint, OpAttrs, OpNode, OpType, ParamRole, attrs_dict,
)

__all__ = [
    "ALL_ROLES", "BASE_ROLES", "INPUT_ID", "MERGE_OPS", "OUTPUT_ID", "Costs", "EdgeKind", "MergePoint", "OpAttrs", "OpNode",
    "OpType", "ParamRole", "attrs_dict", "build_graph", "check_declared", "check_graph", "default_trainable_roles",
    "edge_kind", "graph_costs", "graph_to_json", "node", "nodes", "params_with_roles", "shape",
]
