"""Network-aware (column) bound: never below any placement's max flow (brute force), below the compute
bound when a slow link binds, and clear errors for what it does not cover."""

from __future__ import annotations

import random

import pytest

from tests.planner.test_milp import brute_force, caps, tiny_model
from vllm_helix.errors import InfeasiblePlacement
from vllm_helix.planner.cluster import cluster_from_dict
from vllm_helix.planner.examples import reference_example
from vllm_helix.planner.flow import max_flow
from vllm_helix.planner.milp import network_bound as nb
from vllm_helix.planner.milp import solve_milp
from vllm_helix.planner.milp.formulation import build_formulation
from vllm_helix.planner.milp.network_bound import Kind, fills, network_bound
from vllm_helix.planner.milp.options import SolverOptions
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.planner.throughput import capacity_table


def two_regions(sizes: tuple[int, int], cross: str):
    """Two regions of sizes[0] and sizes[1] nodes; 1 GB/s inside a region, `cross` bandwidth between them."""
    names = [f"n{i}" for i in range(sum(sizes))]
    links = [{"between": ["coordinator", n], "bandwidth": "1GB/s"} for n in names]
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            same = (i < sizes[0]) == (j < sizes[0])
            links.append({"between": [a, names[j]], "bandwidth": "1GB/s" if same else cross})
    nodes = [{"name": n, "gpu": "A100", "vram": "40GB"} for n in names]
    return cluster_from_dict({"nodes": nodes, "links": links})


# node throughput tables T(k) (region A first), layers, region sizes, cross-region bandwidth (18 B per token)
SLOW_LINK_BINDS = {  # every node at its best size makes exactly one pipeline: no room to cross twice as wide
    "cross link 100 tok/s": ([[300, 150], [150], [300, 150], [150]], 6, (2, 2), "1800B/s"),
    "cross link 140 tok/s": ([[300, 150], [150], [300, 150], [150]], 6, (2, 2), "2520B/s"),
    "a spare layer size": ([[300, 150], [150, 70], [300, 150], [150]], 6, (2, 2), "1800B/s"),
}
COLUMNS_BIND = {  # the compute bound counts a node's best area, which no whole number of layers reaches
    "three and two nodes": ([[300, 150], [150], [160], [300, 150], [150]], 6, (3, 2), "1800B/s"),
    "uneven sizes": ([[200, 120], [150, 60], [300, 150], [150]], 5, (2, 2), "1800B/s"),
}


def bound_and_best(tables, layers, sizes, cross):
    cluster, model, capacities = two_regions(sizes, cross), tiny_model(layers), caps(tables)
    form = build_formulation(cluster, model, capacities, SolverOptions())
    return form, network_bound(form, cluster, model, capacities), brute_force(cluster, model, capacities)


@pytest.mark.parametrize("name", list(SLOW_LINK_BINDS))
def test_slow_link_bound_holds_every_placement_and_beats_compute_bound(name):
    tables, layers, sizes, cross = SLOW_LINK_BINDS[name]
    form, bound, best = bound_and_best(tables, layers, sizes, cross)
    assert best > 0
    assert bound.value >= best - 1e-9  # valid: no placement's max flow is above it
    assert bound.value < bound.column_value == pytest.approx(form.flow_cap)  # the slow link tightens it
    assert bound.value == pytest.approx(best, rel=1e-5)  # and here it is exact
    assert [set(r) for r in bound.regions] == [
        {f"n{i}" for i in range(sizes[0])},
        {f"n{i}" for i in range(sizes[0], sum(sizes))},
    ]


@pytest.mark.parametrize("name", list(COLUMNS_BIND))
def test_column_bound_holds_every_placement_and_beats_compute_bound(name):
    form, bound, best = bound_and_best(*COLUMNS_BIND[name])
    assert form.flow_cap > bound.column_value >= bound.value >= best - 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_bound_never_below_brute_force_on_random_clusters(seed):
    rng = random.Random(seed)
    sizes = (2, 2) if seed % 2 else (3, 2)
    tables = []
    for _ in range(sum(sizes)):
        first = rng.randint(60, 300)
        tables.append([first] + [round(first / (k + 1) * rng.uniform(0.9, 1.4)) for k in range(rng.randint(0, 1))])
    layers = rng.randint(3, 5)
    cross = f"{rng.randint(20, 200) * 18}B/s"
    form, bound, best = bound_and_best(tables, layers, sizes, cross)
    assert bound.value >= best - 1e-9, (tables, layers, cross)


@pytest.mark.parametrize("seed", range(3))
def test_merged_node_tables_keep_the_bound_valid(seed, monkeypatch):
    """Measured tables differ a little per node; merging them into kinds (largest T(k)) stays a relaxation."""
    monkeypatch.setattr(nb, "MAX_TYPES", 3)
    rng = random.Random(100 + seed)
    tables = [[round(300 * rng.uniform(0.95, 1.05)), round(150 * rng.uniform(0.95, 1.05))] for _ in range(2)]
    tables += [[round(150 * rng.uniform(0.95, 1.05))] for _ in range(2)]
    tables = [tables[0], tables[2], tables[1], tables[3]]  # each region: one 2-layer node, one 1-layer node
    cluster, model, capacities = two_regions((2, 2), "2520B/s"), tiny_model(6), caps(tables)
    form = build_formulation(cluster, model, capacities, SolverOptions())
    kinds, spread = nb.node_kinds(form, capacities)
    assert spread > 0 and sum(kinds.values()) == 4
    assert nb.network_bound(form, cluster, model, capacities).value >= brute_force(cluster, model, capacities) - 1e-9


def test_no_network_term_when_a_fast_region_holds_the_model():
    cluster, model = two_regions((2, 2), "1080B/s"), tiny_model(3)
    capacities = caps([[100, 80], [100], [100, 80], [90]])  # region A holds 3 layers: no crossing forced
    form = build_formulation(cluster, model, capacities, SolverOptions())
    bound = network_bound(form, cluster, model, capacities)
    assert bound.value == bound.column_value  # only links inside a region would have to count as slow
    assert bound.threshold is not None and bound.threshold > bound.value
    assert bound.value >= brute_force(cluster, model, capacities) - 1e-9


def test_columns_by_hand():
    fast, slow = Kind((100.0,), (1,)), Kind((100.0, 40.0), (1, 2))
    # 3 layers at 80: the fast node fills one column, the slow one at 1 layer another: one column is left
    assert fills({fast: 1, slow: 1}, 3, 80.0, crossing=False) is False
    # at 40 the slow node takes 2 layers: 3 columns, and no room for a shared one
    assert fills({fast: 1, slow: 1}, 3, 40.0, crossing=False) is True
    assert fills({fast: 1, slow: 1}, 3, 40.0, crossing=True) is False
    assert fills({fast: 2, slow: 1}, 3, 40.0, crossing=True) is True


def test_solver_reports_the_lowest_bound_and_names_it():
    tables, layers, sizes, cross = SLOW_LINK_BINDS["cross link 140 tok/s"]
    cluster, model, capacities = two_regions(sizes, cross), tiny_model(layers), caps(tables)
    d = solve_milp(cluster, model, capacities, threads=1, time_limit_s=10).details
    assert d["bound_tokens_per_s"] == pytest.approx(min(v for v in d["bounds_tokens_per_s"].values() if v))
    assert d["bounds_tokens_per_s"]["network"] < d["bounds_tokens_per_s"]["compute"]
    assert d["bound_tokens_per_s"] >= brute_force(cluster, model, capacities) - 1e-6
    assert d["bound_kind"].split()[0] in ("network", "solver")


# 3cluster24 (LLaMA-2-70B): the A100 region [0, 36), a fan-out over two slow links to two L4s, the L4/T4 region,
# a fan-out to two nodes of the third region, its T4s to the end. Max flow 1754.38 tok/s (the A100s at 9 layers).
FAN_OUT_3CLUSTER24 = {
    "n0": (0, 9),
    "n1": (9, 18),
    "n2": (18, 27),
    "n3": (27, 36),
    "n16": (36, 40),
    "n17": (36, 40),
    "n14": (40, 43),
    "n15": (43, 46),
    "n18": (46, 49),
    "n19": (49, 52),
    "n21": (52, 54),
    "n22": (54, 56),
    "n23": (56, 58),
    "n20": (58, 60),
    "n5": (60, 63),
    "n12": (60, 63),
    "n4": (63, 66),
    "n6": (66, 68),
    "n7": (68, 70),
    "n8": (70, 72),
    "n9": (72, 74),
    "n10": (74, 76),
    "n11": (76, 78),
    "n13": (78, 80),
}


def reference_bound(cluster_file: str):
    ex = reference_example("ilp" if cluster_file == "single24.ini" else "swarm", cluster_file)
    capacities = capacity_table(ex.cluster, ex.model, "reference")
    form = build_formulation(ex.cluster, ex.model, capacities, SolverOptions())
    return ex, capacities, form, network_bound(form, ex.cluster, ex.model, capacities)


def test_single24_bound_is_not_below_the_best_known_plans():
    ex, capacities, form, bound = reference_bound("single24.ini")
    reference_layout = max_flow(ex.cluster, ex.model, ex.placement, capacities=capacities).value  # 1289.6
    milp = solve_milp(ex.cluster, ex.model, capacities, threads=1, time_limit_s=10).details["max_flow_tokens_per_s"]
    assert reference_layout < milp <= bound.value <= form.flow_cap + 1e-9  # the MILP plan: 2045.6, optimal


def test_3cluster24_bound_proves_the_fan_out_placement_optimal():
    ex, capacities, form, bound = reference_bound("3cluster24.ini")
    placement = Placement({n: LayerRange(*r) for n, r in FAN_OUT_3CLUSTER24.items()})
    flow = max_flow(ex.cluster, ex.model, placement, capacities=capacities).value
    assert flow <= bound.value <= flow * (1 + 1e-5) < form.flow_cap  # 1754.38 vs the compute bound 2045.64


def test_bad_input_is_a_clear_error():
    cluster, model, capacities = (
        two_regions((2, 2), "1080B/s"),
        tiny_model(4),
        caps([[100, 80], [100], [100, 80], [90]]),
    )
    partial = build_formulation(cluster, model, capacities, SolverOptions(partial_inference=True))
    with pytest.raises(InfeasiblePlacement, match="partial-inference"):
        network_bound(partial, cluster, model, capacities)
    form = build_formulation(cluster, model, capacities, SolverOptions())
    with pytest.raises(InfeasiblePlacement, match="tolerance must be in"):
        network_bound(form, cluster, model, capacities, tolerance=0)


def test_nodes_that_cannot_hold_every_layer_end_the_bisection_at_once(monkeypatch):
    calls = []
    real = nb.fills
    monkeypatch.setattr(nb, "fills", lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
    one = Kind((100.0,), (1,))  # two one-layer nodes cannot fill 3 columns at any flow
    value = nb.smallest_unreachable({one: 2}, 3, 0.0, 200.0, False, nb.TOLERANCE)
    # it used to halve down to 0.0, where the empty column "reaches" the flow, and spin until TIME_LIMIT_S
    assert 0 < value <= nb.MIN_FLOW and len(calls) < 64 and min(calls) > 0


def test_the_bound_returns_by_its_deadline(monkeypatch):
    monkeypatch.setattr(nb, "TIME_LIMIT_S", 1e9)
    fast, slow = Kind((100.0,), (1,)), Kind((100.0, 40.0), (1, 2))
    # a deadline already passed: no check is started, and the assumed-unreachable top is the bound
    assert nb.smallest_unreachable({fast: 1, slow: 1}, 3, 0.0, 80.0, False, nb.TOLERANCE, deadline=0.0) == 80.0
    assert fills({fast: 1, slow: 1}, 3, 80.0, crossing=False, deadline=0.0) is None


def test_solve_milp_gives_the_network_bound_part_of_its_time_limit(monkeypatch):
    from vllm_helix.planner.milp import solve as solve_module

    seen = []
    real = solve_module.network_bound

    def recording(*args, deadline=None, **kwargs):
        seen.append((nb.time.monotonic(), deadline))
        return real(*args, deadline=deadline, **kwargs)

    monkeypatch.setattr(solve_module, "network_bound", recording)
    tables, layers, sizes, cross = SLOW_LINK_BINDS["cross link 140 tok/s"]
    cluster, model, capacities = two_regions(sizes, cross), tiny_model(layers), caps(tables)
    solve_milp(cluster, model, capacities, threads=1, time_limit_s=4)
    (called, deadline), = seen
    assert deadline is not None and deadline <= called + solve_module.NETWORK_SHARE * 4
