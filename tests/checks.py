"""Shared test invariants: import as `from checks import check_flow` (tests/ is on pytest's pythonpath)."""

import pytest

from vllm_helix.planner.cluster import COORDINATOR
from vllm_helix.planner.flow import FlowResult
from vllm_helix.planner.placement import Placement, arc_allowed

# Max flows of the reference's published single24 layouts (helix-spec §8.2).
PUBLISHED = {"ilp": 1289.556, "petals": 952.107, "swarm": 757.853, "homogeneous": 531.703}


def check_flow(flow: FlowResult, placement: Placement, num_layers: int, partial: bool = False) -> None:
    """Conservation at every node, capacities respected, arcs only between layer-compatible nodes."""
    for (src, dst), value in flow.arc_flow.items():
        assert -1e-9 <= value <= flow.arc_capacity[(src, dst)] + 1e-6
        assert arc_allowed(placement[src] if src != COORDINATOR else None,
                           placement[dst] if dst != COORDINATOR else None, num_layers, partial)
    for name in placement.ranges:
        inflow = sum(v for (s, d), v in flow.arc_flow.items() if d == name)
        outflow = sum(v for (s, d), v in flow.arc_flow.items() if s == name)
        assert inflow == pytest.approx(flow.node_flow[name], abs=1e-4)
        assert outflow == pytest.approx(flow.node_flow[name], abs=1e-4)
        assert flow.node_flow[name] <= flow.node_capacity[name] + 1e-6
    out_of_source = sum(v for (s, _), v in flow.arc_flow.items() if s == COORDINATOR)
    into_sink = sum(v for (_, d), v in flow.arc_flow.items() if d == COORDINATOR)
    assert out_of_source == pytest.approx(flow.value, abs=1e-4) and into_sink == pytest.approx(flow.value, abs=1e-4)
