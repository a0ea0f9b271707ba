"""`place(...)`: find a placement with a named method and return it as an evaluated Plan.

Methods live in a plain dict. A method is `fn(cluster, model, capacities, **options) -> PlacementResult`;
options are method-specific (seed for the heuristics; the MILP's `SolverOptions` fields, unknown ones refused).
The methods import `PlacementResult` from `placement`, so this module imports them without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner import heuristics
from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.planner.milp import solve_milp
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import PlacementResult
from vllm_helix.planner.plan import Plan, evaluate_plan
from vllm_helix.planner.throughput import capacity_table

METHODS: dict[str, Callable[..., PlacementResult]] = {
    "petals": heuristics.petals,
    "swarm": heuristics.swarm,
    "homogeneous": heuristics.homogeneous,
    "milp": solve_milp,
}


def place(
    cluster: ClusterSpec, model: ModelSpec, method: str = "milp", *, throughput: str = "reference", **options: Any
) -> Plan:
    if method not in METHODS:
        raise ClusterSpecError(f"unknown placement method {method!r}; choose from {sorted(METHODS)}")
    capacities = capacity_table(cluster, model, throughput)
    result = METHODS[method](cluster, model, capacities, **options)
    return evaluate_plan(
        cluster, model, result.placement, method, throughput=throughput,
        partial_inference=result.partial_inference, details=result.details,
    )
