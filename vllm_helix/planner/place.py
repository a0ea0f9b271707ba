"""`place(...)`: find a placement with a named method and return it as an evaluated Plan.

Methods live in a plain dict. A method is `fn(cluster, model, capacities, **options) -> PlacementResult`;
options are method-specific (seed for the heuristics; solver, time limit, ... for the MILP).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import Placement
from vllm_helix.planner.plan import Plan, evaluate_plan
from vllm_helix.planner.throughput import capacity_table


@dataclass(frozen=True, slots=True)
class PlacementResult:
    placement: Placement
    partial_inference: bool = False
    details: dict[str, Any] = field(default_factory=dict)


def _methods() -> dict[str, Callable[..., PlacementResult]]:
    from vllm_helix.planner import heuristics

    methods: dict[str, Callable[..., PlacementResult]] = {
        "petals": heuristics.petals,
        "swarm": heuristics.swarm,
        "homogeneous": heuristics.homogeneous,
    }
    try:
        from vllm_helix.planner.milp import solve_milp
    except ImportError:  # pragma: no cover - the MILP module is part of the package
        pass
    else:
        methods["milp"] = solve_milp
    return methods


def place(
    cluster: ClusterSpec, model: ModelSpec, method: str = "milp", *, throughput: str = "reference", **options: Any
) -> Plan:
    methods = _methods()
    if method not in methods:
        raise ClusterSpecError(f"unknown placement method {method!r}; choose from {sorted(methods)}")
    capacities = capacity_table(cluster, model, throughput)
    result = methods[method](cluster, model, capacities, **options)
    return evaluate_plan(
        cluster, model, result.placement, method, throughput=throughput,
        partial_inference=result.partial_inference, details=result.details,
    )
