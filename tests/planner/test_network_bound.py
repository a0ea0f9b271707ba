"""Network-aware (crossing) bound: never below any placement's max flow, below the compute bound when slow
links bind, and clear errors for what it does not cover."""

from __future__ import annotations

import pytest

from tests.planner.test_milp import brute_force, caps, tiny_model
from vllm_helix.errors import InfeasiblePlacement
from vllm_helix.planner.cluster import cluster_from_dict
from vllm_helix.planner.milp import solve_milp
from vllm_helix.planner.milp.formulation import build_formulation
from vllm_helix.planner.milp.network_bound import Table, crossing_bound, pair_loss
from vllm_helix.planner.milp.options import SolverOptions


def two_regions(per_region: int, cross: str) -> object:
    """2 regions of `per_region` nodes; 1 GB/s inside a region, `cross` bandwidth between regions."""
    names = [f"n{i}" for i in range(2 * per_region)]
    links = [{"between": ["coordinator", n], "bandwidth": "1GB/s"} for n in names]
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            same = (i < per_region) == (j < per_region)
            links.append({"between": [a, names[j]], "bandwidth": "1GB/s" if same else cross})
    return cluster_from_dict({"nodes": [{"name": n, "gpu": "A100", "vram": "40GB"} for n in names], "links": links})


# (tables per node: region A first, then region B; layers; cross-region bandwidth: tiny_model sends 18 B/token)
CASES = {
    "slow cross link (60 tok/s)": ([[100, 80], [100], [100, 80], [90]], 4, "1080B/s"),
    "slower cross link (25 tok/s)": ([[100, 80], [100], [100, 80], [90]], 4, "450B/s"),
    "uneven nodes": ([[120, 50], [70], [100, 90], [60]], 4, "900B/s"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bound_holds_every_placement_and_beats_compute_bound(name):
    tables, layers, cross = CASES[name]
    cluster, model, capacities = two_regions(2, cross), tiny_model(layers), caps(tables)
    form = build_formulation(cluster, model, capacities, SolverOptions())
    bound = crossing_bound(form, cluster, model, capacities)
    best = brute_force(cluster, model, capacities)
    assert best > 0
    assert bound.value >= best - 1e-9  # valid: no placement's max flow is above it
    assert bound.value < form.flow_cap  # and tighter than the compute bound here
    assert [set(r) for r in bound.regions] == [{"n0", "n1"}, {"n2", "n3"}]


def test_solver_reports_the_lowest_bound_and_names_it():
    tables, layers, cross = CASES["slow cross link (60 tok/s)"]
    cluster, model, capacities = two_regions(2, cross), tiny_model(layers), caps(tables)
    plan = solve_milp(cluster, model, capacities, threads=1, time_limit_s=10)
    d = plan.details
    assert d["bound_tokens_per_s"] == pytest.approx(min(v for v in d["bounds_tokens_per_s"].values() if v))
    assert d["bounds_tokens_per_s"]["network"] < d["bounds_tokens_per_s"]["compute"]
    assert d["bound_tokens_per_s"] >= brute_force(cluster, model, capacities) - 1e-6
    assert d["bound_kind"].split()[0] in ("network", "solver")


def test_no_bound_when_a_fast_region_holds_the_model():
    cluster, model = two_regions(2, "1080B/s"), tiny_model(3)
    capacities = caps([[100, 80], [100], [100, 80], [90]])  # region A holds 3 layers: no crossing forced
    form = build_formulation(cluster, model, capacities, SolverOptions())
    assert crossing_bound(form, cluster, model, capacities).value == float("inf")


def test_pair_loss_by_hand():
    one = Table((100.0,), (1,))
    assert pair_loss(one, one, 100.0) == pytest.approx(100.0)  # two 1-layer nodes sharing 100: one is idle
    two = Table((100.0, 80.0), (1, 2))
    # alone each passes 160 layer-tokens/s at F = 100; sharing 100 the best split is 80 + 20 (2 layers each)
    assert pair_loss(two, two, 100.0) == pytest.approx(320.0 - 200.0)


def test_bad_input_is_a_clear_error():
    cluster, model, capacities = two_regions(2, "1080B/s"), tiny_model(4), caps([[100, 80], [100], [100, 80], [90]])
    partial = build_formulation(cluster, model, capacities, SolverOptions(partial_inference=True))
    with pytest.raises(InfeasiblePlacement, match="partial-inference"):
        crossing_bound(partial, cluster, model, capacities)
    form = build_formulation(cluster, model, capacities, SolverOptions())
    with pytest.raises(InfeasiblePlacement, match="scan steps must be >= 1"):
        crossing_bound(form, cluster, model, capacities, steps=0)
