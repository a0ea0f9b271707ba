"""MILP placement: brute-force optima on small clusters, infeasible input, anytime paths, Gurobi fallback."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vllm_helix.errors import InfeasiblePlacement, SolverUnavailable
from vllm_helix.planner.cluster import cluster_from_dict
from vllm_helix.planner.flow import max_flow
from vllm_helix.planner.milp import solve_milp
from vllm_helix.planner.milp.formulation import PlacementOptions, build_formulation, flow_upper_bound
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.planner.throughput import NodeCapacity

GB = 1e9


def tiny_model(layers: int) -> ModelSpec:
    return ModelSpec(name=f"tiny{layers}", num_layers=layers, hidden_size=8, layer_bytes=1 * GB,
                     activation_bytes_per_token=16, token_bytes=2)


def tiny_cluster(n: int, slow: dict[tuple[int, int], str] | None = None, missing=(), vram: str = "40GB"):
    """n nodes, complete 1 GB/s links except `slow` pairs (given bandwidth) and `missing` pairs."""
    slow = slow or {}
    links = []
    for i, j in itertools.combinations(range(n), 2):
        if (i, j) in missing:
            continue
        links.append({"between": [f"n{i}", f"n{j}"], "bandwidth": slow.get((i, j), "1GB/s"), "latency": "1ms"})
    for i in range(n):
        links.append({"between": ["coordinator", f"n{i}"], "bandwidth": "1GB/s"})
    return cluster_from_dict({"nodes": [{"name": f"n{i}", "gpu": "A100", "vram": vram} for i in range(n)],
                              "links": links})


def caps(tables: list[list[float]]) -> dict[str, NodeCapacity]:
    return {f"n{i}": NodeCapacity(tuple(t), tuple(1000 for _ in t)) for i, t in enumerate(tables)}


def brute_force(cluster, model, capacities, partial=False) -> float:
    """Best max flow over every placement (each node unused or any interval that fits)."""
    names = cluster.node_names
    options = [[None] + [LayerRange(s, s + k) for k in range(1, capacities[n].max_layers + 1)
                         for s in range(model.num_layers - k + 1)] for n in names]
    best = 0.0
    for combo in itertools.product(*options):
        ranges = {n: r for n, r in zip(names, combo) if r is not None}
        if not any(r.start == 0 for r in ranges.values()) or not any(r.end == model.num_layers for r in ranges.values()):
            continue
        value = max_flow(cluster, model, Placement(ranges), capacities=capacities, partial_inference=partial).value
        best = max(best, value)
    return best


def milp_flow(cluster, model, capacities, **options) -> float:
    result = solve_milp(cluster, model, capacities, threads=2, time_limit_s=20, **options)
    value = max_flow(cluster, model, result.placement, capacities=capacities,
                     partial_inference=result.partial_inference).value
    assert value == pytest.approx(result.details["max_flow_tokens_per_s"], abs=1e-6)
    return value


# ------------------------------------------------------------------------------------ optimality

CASES = {
    # name: (node throughput tables T(k), layers, slow links, missing links)
    "non-monotone k*T(k)": ([[100, 70, 40], [90, 30], [50, 45, 44]], 4, {}, ()),
    "one fast node beats a chain": ([[300, 20], [60, 55, 50], [60, 55, 50]], 3, {}, ()),
    "binding links": ([[100, 80], [100, 80], [100, 80], [100, 80]], 4, {(0, 1): "1600B/s", (2, 3): "800B/s"}, ()),
    "missing links force a detour": ([[50, 40, 30], [50, 40], [50, 40], [50, 40, 30]], 4, {}, ((0, 1), (0, 2))),
}


@pytest.mark.solver
@pytest.mark.parametrize("case", list(CASES))
def test_milp_finds_the_brute_force_optimum(case):
    tables, layers, slow, missing = CASES[case]
    cluster, model, capacities = tiny_cluster(len(tables), slow, missing), tiny_model(layers), caps(tables)
    expected = brute_force(cluster, model, capacities)
    assert expected > 0
    assert milp_flow(cluster, model, capacities) == pytest.approx(expected, rel=1e-4)
    assert milp_flow(cluster, model, capacities, warm_start=False) == pytest.approx(expected, rel=1e-4)
    assert milp_flow(cluster, model, capacities, warm_start=False, formulation="interval") == pytest.approx(
        expected, rel=1e-4)


@pytest.mark.solver
def test_milp_partial_inference_matches_brute_force():
    tables, layers = [[100, 70, 40], [90, 30], [50, 45, 44]], 4
    cluster, model, capacities = tiny_cluster(3), tiny_model(layers), caps(tables)
    expected = brute_force(cluster, model, capacities, partial=True)
    assert milp_flow(cluster, model, capacities, partial_inference=True) == pytest.approx(expected, rel=1e-4)
    assert expected >= brute_force(cluster, model, capacities)


def test_flow_upper_bound_is_valid_and_below_u():
    tables = [[100, 70, 40], [90, 30], [50, 45, 44]]
    cluster, model, capacities = tiny_cluster(3), tiny_model(4), caps(tables)
    bound = flow_upper_bound({n: c.tokens_per_s for n, c in capacities.items()}, 4)
    u = sum(max(k * t for k, t in enumerate(tab, 1)) for tab in tables) / 4
    assert brute_force(cluster, model, capacities) <= bound + 1e-9 <= u + 1e-9
