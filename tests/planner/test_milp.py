"""MILP placement: brute-force optima on small clusters, infeasible input, anytime paths, Gurobi fallback."""

from __future__ import annotations

import itertools
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
from vllm_helix.planner.milp.formulation import flow_upper_bound
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
        ranges = {n: r for n, r in zip(names, combo, strict=True) if r is not None}
        spans = ranges.values()
        if not any(r.start == 0 for r in spans) or not any(r.end == model.num_layers for r in spans):
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


# ------------------------------------------------------------------------------------ bad input


def test_model_that_does_not_fit_fails_fast_with_missing_memory():
    cluster, model = tiny_cluster(2), tiny_model(6)
    with pytest.raises(InfeasiblePlacement, match=r"does not fit.*GB more VRAM"):
        solve_milp(cluster, model, caps([[10, 9], [10, 9]]), time_limit_s=5)


def test_kv_reserve_caps_layers_by_vram():
    cluster, model = tiny_cluster(2, vram="4GB"), tiny_model(4)  # 4 GB, half for KV -> 2 layers per node
    result = solve_milp(cluster, model, caps([[10, 9, 8, 7], [10, 9, 8, 7]]), time_limit_s=5)
    assert all(r.size <= 2 for r in result.placement.ranges.values())
    with pytest.raises(InfeasiblePlacement, match="GB more VRAM"):
        solve_milp(cluster, model, caps([[10, 9, 8, 7], [10, 9, 8, 7]]), kv_reserve_fraction=0.8, time_limit_s=5)


def test_pins_excludes_and_layer_caps_are_respected():
    tables = [[100, 70, 40], [90, 30, 20], [50, 45, 44], [50, 45, 44]]
    cluster, model, capacities = tiny_cluster(4), tiny_model(4), caps(tables)
    result = solve_milp(cluster, model, capacities, pins={"n0": (1, 3)}, excludes=["n1"], max_layers_per_node=2,
                        time_limit_s=10)
    ranges = result.placement.ranges
    assert ranges["n0"] == LayerRange(1, 3) and "n1" not in ranges
    assert all(r.size <= 2 for r in ranges.values())


@pytest.mark.parametrize("options, match", [
    ({"pins": {"nX": (0, 1)}}, "unknown node"),
    ({"pins": {"n0": (0, 9)}}, "outside the model"),
    ({"pins": {"n0": (0, 2)}, "excludes": ["n0"]}, "both pinned and excluded"),
    ({"max_layers_per_node": 0}, "max_layers_per_node"),
    ({"time_limit_s": 0}, "time limit"),
])
def test_bad_options_raise_helix_errors(options, match):
    with pytest.raises(InfeasiblePlacement, match=match):
        solve_milp(tiny_cluster(3), tiny_model(4), caps([[10, 9], [10, 9], [10, 9]]), **options)


def test_unknown_solver_is_refused():
    with pytest.raises(SolverUnavailable, match="unknown MILP solver"):
        solve_milp(tiny_cluster(3), tiny_model(4), caps([[10, 9], [10, 9], [10, 9]]), solver="cplex")


# ------------------------------------------------------------------------------------ anytime paths

INTERRUPT_SCRIPT = textwrap.dedent("""
    import sys
    from vllm_helix.planner.examples import reference_example
    from vllm_helix.planner.place import place
    from vllm_helix.planner.plan import save_plan
    ex = reference_example("swarm", "3cluster24.ini")
    print("solving", flush=True)
    plan = place(ex.cluster, ex.model, "milp", time_limit_s=120, threads=2)
    save_plan(plan, sys.argv[1])
""")


def check_plan(path: Path):
    from vllm_helix.planner.files import load_plan

    plan = load_plan(path)
    assert plan.flow.value > 0
    assert plan.details["max_flow_tokens_per_s"] == pytest.approx(plan.flow.value, rel=1e-6)
    return plan


@pytest.mark.solver
def test_ctrl_c_stops_the_solver_and_writes_the_best_plan(tmp_path):
    script, out = tmp_path / "solve.py", tmp_path / "plan.yaml"
    script.write_text(INTERRUPT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parents[2])
    assert proc.stdout.readline().strip() == "solving"
    time.sleep(4)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 10
    plan = check_plan(out)
    assert plan.details["stopped_by"] in ("interrupted", "solved")


@pytest.mark.solver
def test_time_limit_writes_a_plan_at_least_as_good_as_the_warm_start(tmp_path):
    from vllm_helix.planner.examples import reference_example
    from vllm_helix.planner.place import place
    from vllm_helix.planner.plan import save_plan

    ex = reference_example("swarm", "3cluster24.ini")
    plan = place(ex.cluster, ex.model, "milp", time_limit_s=3, threads=2)
    save_plan(plan, tmp_path / "plan.yaml")
    plan = check_plan(tmp_path / "plan.yaml")
    assert plan.details["stopped_by"] == "time limit"
    assert plan.flow.value >= plan.details["warm_start_tokens_per_s"] - 1e-6
    assert plan.flow.value > 616.38  # the Swarm layout's max flow on this cluster


def test_single24_is_proven_optimal_by_the_clipping_bound():
    from vllm_helix.planner.examples import reference_example
    from vllm_helix.planner.place import place

    ex = reference_example("ilp")
    plan = place(ex.cluster, ex.model, "milp", time_limit_s=60)
    assert plan.flow.value == pytest.approx(2045.641, abs=1e-3)
    assert plan.details["gap"] == 0 and plan.details["status"] == "optimal"


# ------------------------------------------------------------------------------------ gurobi


def _gurobi_or_skip():
    try:
        import gurobipy

        with gurobipy.Env(params={"OutputFlag": 0}):
            pass
    except Exception as exc:  # noqa: BLE001 - any import/license failure means: skip
        pytest.skip(f"gurobipy unusable here: {exc}")


@pytest.mark.solver
def test_gurobi_solves_a_small_model():
    _gurobi_or_skip()
    tables, layers, slow, missing = CASES["binding links"]
    cluster, model, capacities = tiny_cluster(len(tables), slow, missing), tiny_model(layers), caps(tables)
    result = solve_milp(cluster, model, capacities, solver="gurobi", warm_start=False, time_limit_s=20)
    assert result.details["solver"] == "gurobi"
    assert result.details["max_flow_tokens_per_s"] == pytest.approx(brute_force(cluster, model, capacities), rel=1e-4)


@pytest.mark.solver
def test_gurobi_size_limited_license_falls_back_to_cpsat(capsys):
    _gurobi_or_skip()
    from vllm_helix.planner.examples import reference_example
    from vllm_helix.planner.throughput import capacity_table

    ex = reference_example("swarm", "3cluster24.ini")
    result = solve_milp(ex.cluster, ex.model, capacity_table(ex.cluster, ex.model), solver="gurobi", time_limit_s=3)
    if result.details["solver"] == "gurobi":
        pytest.skip("a full Gurobi license is installed here")
    assert result.details["solver"] == "cpsat"
    assert "size-limited" in result.details["fallback"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "falling back to CP-SAT" in err[0]


def test_the_live_progress_line_ends_before_what_follows(capsys):
    from vllm_helix.planner.milp.progress import Progress

    with Progress("cp-sat", show=True) as bar:  # stderr is captured, not a terminal
        bar.incumbent(10.0, 10.0, 20.0)
    print("error: next", file=sys.stderr)
    err = capsys.readouterr().err
    assert "best max flow 10.00 tok/s" in err and err.endswith("keeps the best plan)\nerror: next\n"), err
