"""Diverse candidate plans for simulation-in-the-loop planning (`vllm-helix plan`, objective throughput/latency).

Max flow alone favours deep pipelines whose round trips are long (see `serving_estimate`), so the search
offers the simulator plans of different shapes, cheapest and most promising first:

1. the max-flow MILP (deterministic work limit) — the bound's best plan;
2. KV-balanced pipelines (`kv_pipelines`) at every per-layer KV target kappa, with the unused nodes added as
   parallel replicas of existing stages (branches, as in the reference's layout: more KV room, smaller batches
   per node) — the shapes that keep the most requests in flight;
3. the MILP warm start's greedy pipelines at every target throughput tau (from one deep pipeline over every
   node down to a short one on the fastest nodes), with replicas;
4. the reference heuristics: petals, swarm, homogeneous;
5. the greedy and KV-balanced pipelines without replicas;
6. the MILP under pipeline-depth bounds: every used node holds >= k layers, so a route has <= L / k stages.

Each candidate's arc flows (the router's weights) spread the load below 80 % of every node where the flow
allows; the shapes with replicas are also offered with direct routing (label suffix " direct": shortest routes
first, spare replicas idle), right after their spread version (`flow.ROUTINGS`).

Every candidate is an evaluated `Plan` (the evaluator's max flow and arc flows); generation is lazy so the
caller can stop at any time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from vllm_helix.errors import InfeasiblePlacement
from vllm_helix.planner import heuristics
from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.planner.kv_pipelines import kv_per_layer, kv_pipelines
from vllm_helix.planner.milp import solve_milp
from vllm_helix.planner.milp.formulation import build_formulation
from vllm_helix.planner.milp.options import SolverOptions
from vllm_helix.planner.milp.warm_start import greedy_pipelines, with_replicas
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import Placement, PlacementResult
from vllm_helix.planner.plan import Plan, evaluate_plan
from vllm_helix.planner.throughput import NodeCapacity

HEURISTICS = ("petals", "swarm", "homogeneous")
REPLICAS = "+replicas"  # shapes with the unused nodes added as replicas: also tried with direct routing
MAX_DEPTH_BOUNDS = 3  # depth-bounded MILP runs (each one solver run under the work limit)


@dataclass(frozen=True, slots=True)
class Candidate:
    label: str  # how it was made, e.g. "milp max-flow", "greedy tau=1212", "milp depth<=20"
    plan: Plan


def generate(cluster: ClusterSpec, model: ModelSpec, capacities: Mapping[str, NodeCapacity], throughput: str,
             options: SolverOptions, deadline: float | None = None) -> Iterator[Candidate]:
    """Candidates in the order described in the module docstring; identical placements are yielded once.

    With a `deadline` (time.monotonic()), no MILP run outlasts it (its wall-clock limit is cut to fit)."""
    seen: set[tuple] = set()

    def fresh(label: str, result: PlacementResult, method: str) -> Candidate | None:
        key = tuple(sorted((n, r.start, r.end) for n, r in result.placement.ranges.items()))
        if key in seen:
            return None
        seen.add(key)
        plan = evaluate_plan(cluster, model, result.placement, method, throughput=throughput,
                             partial_inference=result.partial_inference, details=result.details)
        return Candidate(label, plan) if plan.flow.value > 0 else None

    def direct(candidate: Candidate) -> Candidate | None:
        plan = candidate.plan
        routed = evaluate_plan(cluster, model, plan.placement, plan.method, throughput=throughput,
                               partial_inference=plan.partial_inference, details=plan.details, routing="direct")
        same = routed.flow.arc_flow == plan.flow.arc_flow
        return None if same else Candidate(f"{candidate.label} direct", routed)

    def solver(**changes) -> SolverOptions:
        limit = options.time_limit_s if deadline is None else min(options.time_limit_s, deadline - time.monotonic())
        return options.updated(time_limit_s=max(0.5, limit), **changes)

    for label, method, make in _sources(cluster, model, capacities, options, solver):
        try:
            result = make()
        except InfeasiblePlacement:
            continue  # this shape does not exist on this cluster (e.g. swarm stages that do not divide)
        candidate = fresh(label, result, method)
        if candidate is not None:
            yield candidate
            routed = direct(candidate) if label.endswith(REPLICAS) else None
            if routed is not None:
                yield routed


def _sources(cluster, model, capacities, options: SolverOptions, solver):
    yield "milp max-flow", "milp", lambda: solve_milp(cluster, model, capacities, solver())
    form = build_formulation(cluster, model, capacities, options)
    kv_shapes = kv_pipelines(form, cluster, kv_per_layer(cluster, model, form)) if model.profile_name else ()
    shapes: list[tuple[str, str, Placement, dict[str, float]]] = [
        (f"kv={kappa / 1000:.0f}k", "kv-balanced", placement, {"kv_slots_per_layer": kappa})
        for kappa, placement in kv_shapes]
    shapes += [(f"greedy tau={tau / form.scale:.0f}", "greedy", placement,
                {"greedy_tau_tokens_per_s": tau / form.scale}) for tau, placement in greedy_pipelines(form, cluster)]
    for label, method, placement, info in shapes:
        yield (f"{label}{REPLICAS}", method,
               lambda p=placement, i=info: _fixed(with_replicas(form, p), options, i))
    for name in HEURISTICS:
        yield name, name, lambda name=name: getattr(heuristics, name)(cluster, model, capacities, seed=options.seed)
    for label, method, placement, info in shapes:
        yield label, method, lambda p=placement, i=info: _fixed(p, options, i)
    for k in depth_bounds(form.throughput, model.num_layers):
        yield (f"milp depth<={-(-model.num_layers // k)}", "milp",
               lambda k=k: solve_milp(cluster, model, capacities, solver(min_layers_per_node=k)))


def _fixed(placement: Placement, options: SolverOptions, info: dict) -> PlacementResult:
    return PlacementResult(placement, options.partial_inference, dict(info))


def depth_bounds(throughput: Mapping[str, tuple[int, ...]], num_layers: int) -> list[int]:
    """A few minimum layer counts per node (2 .. the largest that still holds the model), spread evenly."""
    feasible = [k for k in range(2, num_layers + 1)
                if sum(len(t) for t in throughput.values() if len(t) >= k) >= num_layers]
    if len(feasible) <= MAX_DEPTH_BOUNDS:
        return feasible
    step = (len(feasible) - 1) / (MAX_DEPTH_BOUNDS - 1)
    return sorted({feasible[round(i * step)] for i in range(MAX_DEPTH_BOUNDS)})
