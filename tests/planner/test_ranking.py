"""Simulation-in-the-loop ranking: on a small cluster every placement is enumerated and simulated, and the
search must choose the brute-force best for each objective; anytime stops keep the best so far."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from vllm_helix.errors import ClusterSpecError, InfeasiblePlacement
from vllm_helix.planner.candidates import Candidate, depth_bounds
from vllm_helix.planner.examples import reference_example
from vllm_helix.planner.milp import solve_milp
from vllm_helix.planner.milp.options import SolverOptions
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.planner.plan import evaluate_plan
from vllm_helix.planner.ranking import Objective, choose_plan, search
from vllm_helix.planner.serving_estimate import estimate
from vllm_helix.planner.throughput import capacity_table
from vllm_helix.sim.run import SimConfig, simulate

WINDOW, WARMUP = 5.0, 5.0  # simulated seconds: a 2-layer slice serves thousands of tokens/s
SHORT = {"window_s": WINDOW, "warmup_s": WARMUP, "confirm_window_s": None}  # rank by the short window alone
LAYERS = 2


@pytest.fixture(scope="module")
def small():
    """One A100, one L4, one T4 of single24 (LLaMA-2-70B profiles) serving a 2-layer slice of the model."""
    ex = reference_example("ilp")
    keep = {"n6", "n0", "n1"}  # A100, L4, T4
    links = tuple(lk for lk in ex.cluster.links if {lk.src, lk.dst} <= keep | {"coordinator"})
    cluster = dataclasses.replace(ex.cluster, nodes=tuple(n for n in ex.cluster.nodes if n.name in keep), links=links)
    model = dataclasses.replace(ex.model, num_layers=LAYERS)
    return cluster, model


@pytest.fixture(scope="module")
def every_plan(small):
    """Every placement with a non-zero max flow (each node unused or any interval)."""
    cluster, model = small
    intervals = [None] + [LayerRange(s, s + k) for k in range(1, LAYERS + 1) for s in range(LAYERS - k + 1)]
    plans = []
    for combo in itertools.product(intervals, repeat=len(cluster.nodes)):
        ranges = {n.name: r for n, r in zip(cluster.nodes, combo, strict=True) if r is not None}
        if ranges:
            plan = evaluate_plan(cluster, model, Placement(ranges), "enumerated", throughput="profile")
            if plan.flow.value > 0:
                plans.append(Candidate(f"p{len(plans)}", plan))
    return plans[::3]  # 17 of the 49, to keep the test short


@pytest.fixture(scope="module")
def offline_decode(every_plan):
    """Brute force: each plan simulated directly (not through the ranking code)."""
    return {c.label: simulate(c.plan, SimConfig(duration_s=WINDOW, warmup_s=WARMUP)).decode_throughput
            for c in every_plan}


def test_throughput_objective_chooses_the_brute_force_best(every_plan, offline_decode):
    result = search(reversed(every_plan), Objective("throughput", **SHORT))
    assert offline_decode[result.best.candidate.label] == max(offline_decode.values())  # (ties: any of them)
    assert [r.score.decode_tokens_per_s for r in result.ranked] == sorted(offline_decode.values(), reverse=True)
    assert result.stopped_by == "done" and len(result.ranked) == len(every_plan)


def test_latency_objective_and_slo(every_plan):
    plans = every_plan[:4]
    rate = 0.3 * min(c.plan.flow.value for c in plans)
    p95 = {c.label: simulate(c.plan, SimConfig(mode="online", duration_s=2 * WINDOW, token_rate=rate,
                                               max_time_s=1e4)).decode_latency["p95"] for c in plans}
    result = search(plans, Objective("latency", window_s=2 * WINDOW, rate=rate))
    assert p95[result.best.candidate.label] == min(p95.values())
    # an SLO between the fastest and the slowest: every plan that meets it ranks above every one that misses
    slo = sorted(p95.values())[len(p95) // 2]
    ranked = search(plans, Objective("throughput", window_s=2 * WINDOW, warmup_s=WARMUP, rate=rate, slo_s=slo,
                                    confirm_window_s=None)).ranked
    meets = [p95[r.candidate.label] <= slo for r in ranked]
    assert meets == sorted(meets, reverse=True) and any(meets) and not all(meets)


def test_max_flow_objective_does_not_simulate(every_plan):
    result = search(every_plan, Objective("max-flow"))
    assert result.best.candidate.plan.flow.value == max(c.plan.flow.value for c in every_plan)
    assert all(r.score.decode_tokens_per_s is None for r in result.ranked)


def test_finalists_are_confirmed_on_the_longer_window(every_plan, offline_decode):
    """The best three by the short window are re-simulated on the confirm window; the winner is the best of
    them there (brute force), and the other candidates keep their short-window order below them."""
    long = 3 * WINDOW
    objective = Objective("throughput", window_s=WINDOW, warmup_s=WARMUP, confirm_window_s=long)
    result = search(every_plan, objective)
    finalists = sorted(every_plan, key=lambda c: offline_decode[c.label], reverse=True)[:3]
    confirmed = {c.label: simulate(c.plan, SimConfig(duration_s=long, warmup_s=WARMUP)).decode_throughput
                 for c in finalists}
    assert {r.candidate.label for r in result.ranked[:3]} == set(confirmed)
    assert [r.score.confirmed_decode_tokens_per_s for r in result.ranked[:3]] == sorted(confirmed.values(),
                                                                                         reverse=True)
    assert all(r.score.confirmed_decode_tokens_per_s is None for r in result.ranked[3:])
    rest = [r.score.decode_tokens_per_s for r in result.ranked[3:]]
    assert rest == sorted(rest, reverse=True)
    # no time left after the short window: nothing is confirmed and the search says why
    stopped = search(every_plan[:4], objective, time_limit_s=0)
    assert stopped.stopped_by == "time limit" and stopped.ranked[0].score.confirmed_decode_tokens_per_s is None


def test_anytime_stops_keep_the_best_scored(every_plan, offline_decode):
    def interrupted():
        yield from every_plan[:3]
        raise KeyboardInterrupt

    result = search(interrupted(), Objective("throughput", **SHORT))
    assert result.stopped_by == "interrupted" and len(result.ranked) == 3
    first = {c.label: offline_decode[c.label] for c in every_plan[:3]}
    assert first[result.best.candidate.label] == max(first.values())
    result = search(every_plan, Objective("throughput", **SHORT), time_limit_s=0)
    assert result.stopped_by == "time limit" and len(result.ranked) == 1
    with pytest.raises(ClusterSpecError, match="no candidate"):
        search(iter(()), Objective())


def test_a_simulation_past_the_time_limit_is_cut(every_plan, monkeypatch):
    import time

    from vllm_helix.planner import ranking

    objective = Objective("throughput", **SHORT)
    first = ranking.score_plan(every_plan[0].plan, objective)

    def score(plan, objective):  # the first candidate scores at once; any other simulates far past the budget
        if plan is every_plan[0].plan:
            return first
        time.sleep(30)
        raise AssertionError("not cut at the time limit")

    monkeypatch.setattr(ranking, "score_plan", score)
    monkeypatch.setattr(ranking, "FIRST_SCORE_GRACE_S", 0.2)
    started = time.monotonic()
    result = search(every_plan[:3], objective, time_limit_s=0.5)
    assert result.stopped_by == "time limit" and [r.candidate for r in result.ranked] == every_plan[:1]
    # nothing scored in time: the first simulation may take FIRST_SCORE_GRACE_S more, then the search says why
    with pytest.raises(ClusterSpecError, match=r"\(time limit\); .* raise --time-limit or lower --sim-window"):
        search(every_plan[1:3], objective, time_limit_s=0.1)
    assert time.monotonic() - started < 5  # not the 30 s the simulations would take


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "speed"}, "unknown objective"),
    ({"name": "latency"}, "need --rate"),
    ({"slo_s": 1.0}, "need --rate"),
    ({"window_s": 0}, "window must be > 0"),
    ({"confirm_window_s": -1}, "confirm window must be > 0"),
    ({"window_s": float("inf")}, r"window must be > 0 and at most 86400 s \(--sim-window\)"),
    ({"window_s": 1e7}, "window must be > 0 and at most 86400"),
    ({"name": "latency", "rate": float("inf")}, r"rate must be > 0 and at most 1e\+07 tokens/s \(--rate\)"),
    ({"rate": 1.0, "slo_s": float("nan")}, "slo must be > 0"),
    ({"warmup_s": float("inf")}, "warm-up must be in"),
])
def test_bad_objectives_are_refused(kwargs, match):
    with pytest.raises(ClusterSpecError, match=match):
        Objective(**kwargs)


def test_estimate_counts_kv_room_and_round_trip():
    ex = reference_example("ilp")
    deep = evaluate_plan(ex.cluster, ex.model, ex.placement, "ilp")
    e = estimate(deep)
    assert e.in_flight > 0 and e.round_trip_s > 0
    assert e.decode_tokens_per_s == pytest.approx(min(e.in_flight / e.round_trip_s, deep.flow.value * 232 / 995))


def test_choose_plan_records_every_candidate(small):
    cluster, model = small
    objective = Objective("throughput", window_s=WINDOW, warmup_s=WARMUP, confirm_window_s=2 * WINDOW)
    plan, result = choose_plan(cluster, model, "profile", objective, SolverOptions(solver="cpsat", work_limit=2),
                               time_limit_s=600)
    rows = plan.details["candidates"]
    assert len(rows) == len(result.ranked) >= 3 and rows[0]["candidate"] == plan.details["candidate"]
    assert {"max_flow", "decode_tokens_per_s", "total_tokens_per_s", "prompt_p50_s", "prompt_p95_s",
            "decode_p50_s", "decode_p95_s"} <= set(rows[0])
    assert plan.details["reproducible"] is True and rows[0]["confirmed_decode_tokens_per_s"] > 0
    again, _ = choose_plan(cluster, model, "profile", objective, SolverOptions(solver="cpsat", work_limit=2),
                           time_limit_s=600)
    assert again.placement == plan.placement and again.details["candidates"] == rows


# ------------------------------------------------------------------------------------ solver options


def test_unknown_solver_options_are_an_error():
    with pytest.raises(InfeasiblePlacement, match=r"unknown MILP option\(s\) \['time_limit'\]"):
        SolverOptions.from_kwargs(time_limit=5)
    ex = reference_example("ilp")
    with pytest.raises(InfeasiblePlacement, match="unknown MILP option"):
        solve_milp(ex.cluster, ex.model, capacity_table(ex.cluster, ex.model), treads=2)
    with pytest.raises(InfeasiblePlacement, match="min_layers_per_node must be >= 1"):
        SolverOptions(min_layers_per_node=0)


def test_depth_bound_keeps_every_stage_at_least_k_layers():
    ex = reference_example("ilp")
    caps = capacity_table(ex.cluster, ex.model)
    result = solve_milp(ex.cluster, ex.model, caps, solver="cpsat", min_layers_per_node=4, work_limit=2)
    assert min(r.size for r in result.placement.ranges.values()) >= 4  # <= 20 stages on any route
    assert result.details["min_layers_per_node"] == 4
    with pytest.raises(InfeasiblePlacement, match="cannot hold all 80 layers"):
        solve_milp(ex.cluster, ex.model, caps, min_layers_per_node=9)
    assert depth_bounds({"a": (1,) * 4, "b": (1,) * 4}, 8) == [2, 3, 4]


@pytest.mark.solver
def test_work_limit_makes_the_solver_deterministic():
    ex = reference_example("swarm", "3cluster24.ini")
    caps = capacity_table(ex.cluster, ex.model)
    runs = [solve_milp(ex.cluster, ex.model, caps, solver="cpsat", work_limit=3, time_limit_s=120) for _ in range(2)]
    assert runs[0].placement == runs[1].placement
    assert runs[0].details["max_flow_tokens_per_s"] == runs[1].details["max_flow_tokens_per_s"]
    assert runs[0].details["stopped_by"] == "work limit" and runs[0].details["reproducible"] is True


def test_replicas_add_unused_nodes_as_exactly_chained_branches():
    from vllm_helix.planner.milp.formulation import build_formulation, integer_flow
    from vllm_helix.planner.milp.warm_start import greedy_pipelines, with_replicas

    ex = reference_example("ilp")
    form = build_formulation(ex.cluster, ex.model, capacity_table(ex.cluster, ex.model), SolverOptions())
    tau, pipeline = [p for p in greedy_pipelines(form, ex.cluster) if len(p[1].ranges) < 20][0]
    branched = with_replicas(form, pipeline)
    assert len(branched.ranges) > len(pipeline.ranges)
    assert all(branched[n] == r for n, r in pipeline.ranges.items())  # the pipeline stays as it was
    boundaries = {r.start for r in pipeline.ranges.values()} | {r.end for r in pipeline.ranges.values()}
    assert all({r.start, r.end} <= boundaries for r in branched.ranges.values())  # replicas chain exactly
    assert integer_flow(form, branched)[0] >= integer_flow(form, pipeline)[0]


def test_kv_balanced_pipelines_give_every_layer_at_least_kappa_kv_room():
    from vllm_helix.planner.kv_pipelines import kv_per_layer, kv_pipelines
    from vllm_helix.planner.milp.formulation import build_formulation, integer_flow

    ex = reference_example("ilp")
    form = build_formulation(ex.cluster, ex.model, capacity_table(ex.cluster, ex.model), SolverOptions())
    kv = kv_per_layer(ex.cluster, ex.model, form)
    assert kv["n6"][7] == 631072  # an A100 holding 8 layers of LLaMA-2-70B: 631k token slots per layer
    found = list(kv_pipelines(form, ex.cluster, kv))
    kappas = [kappa for kappa, _ in found]
    assert len(found) >= 5 and kappas == sorted(kappas, reverse=True)
    for kappa, placement in found:
        assert integer_flow(form, placement)[0] > 0  # exactly chained through all 80 layers
        assert all(kv[n][r.size - 1] >= kappa for n, r in placement.ranges.items())
    # the max-flow optimum (A100s x 8, L4s x 3, T4s x 2) leaves its A100 layers 631k slots; the KV-balanced
    # shapes go higher on every layer
    assert max(kappas) > 631072


def test_shapes_with_replicas_are_offered_again_with_direct_routing():
    from vllm_helix.planner.candidates import generate

    ex = reference_example("ilp")
    capacities = capacity_table(ex.cluster, ex.model)
    found = list(itertools.islice(generate(ex.cluster, ex.model, capacities, "reference",
                                           SolverOptions(solver="cpsat", work_limit=2)), 8))
    pairs = [(a, b) for a, b in itertools.pairwise(found) if b.label == f"{a.label} direct"]
    assert pairs and all(a.label.endswith("+replicas") for a, _ in pairs)
    for spread, direct in pairs:
        assert direct.plan.placement == spread.plan.placement and direct.plan.flow.value == spread.plan.flow.value
        assert (spread.plan.flow.routing, direct.plan.flow.routing) == ("spread", "direct")
        assert direct.plan.flow.arc_flow != spread.plan.flow.arc_flow
    assert not any(c.label.endswith("direct") for c in found if "+replicas" not in c.label)
