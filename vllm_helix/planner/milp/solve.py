"""`solve_milp`: build the formulation, warm-start, run a backend anytime, verify with the evaluator."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

from vllm_helix.errors import InfeasiblePlacement, SolverUnavailable
from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.planner.flow import max_flow
from vllm_helix.planner.milp.cpsat import SolveOutcome
from vllm_helix.planner.milp.formulation import Formulation, build_formulation, describe
from vllm_helix.planner.milp.network_bound import network_bound
from vllm_helix.planner.milp.options import SolverOptions
from vllm_helix.planner.milp.progress import Progress
from vllm_helix.planner.milp.warm_start import warm_start as greedy_warm_start
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import Placement, PlacementResult
from vllm_helix.planner.throughput import NodeCapacity


def solve_milp(
    cluster: ClusterSpec, model: ModelSpec, capacities: Mapping[str, NodeCapacity],
    options: SolverOptions | None = None, **kwargs: Any,
) -> PlacementResult:
    """Placement maximizing the cluster's max flow (tokens/s) under `options` (or keyword options).

    Ctrl-C stops the solver and returns the best placement found so far. Raises InfeasiblePlacement when
    the model cannot fit (saying how much memory is missing) or an option is unknown or out of range, and
    SolverUnavailable for an unknown solver.
    """
    options = (options or SolverOptions()).updated(**kwargs)
    solver = options.solver
    if solver == "auto":  # gurobipy when installed (a size-limited license falls back to CP-SAT below)
        solver = "gurobi" if importlib.util.find_spec("gurobipy") else "cpsat"
    started = time.monotonic()
    form = build_formulation(cluster, model, capacities, options)
    # the bound shares the time limit with the search, and may take at most NETWORK_SHARE of it
    bound_by = started + NETWORK_SHARE * options.time_limit_s
    network = None if options.partial_inference else network_bound(form, cluster, model, capacities,
                                                                    deadline=bound_by)
    ceiling = min(form.flow_cap, network.value) if network else form.flow_cap

    def verify(placement: Placement) -> float:
        return max_flow(cluster, model, placement, capacities=capacities,
                        partial_inference=options.partial_inference).value

    start = greedy_warm_start(form, cluster)[0] if options.warm_start else None
    start_flow = verify(start) if start is not None else 0.0
    run = dict(threads=options.threads, seed=options.seed, relative_gap=options.relative_gap,
               time_limit_s=max(0.1, options.time_limit_s - (time.monotonic() - started)),
               work_limit=options.work_limit)
    with Progress(solver, show=options.progress) as bar:
        bar.set_bound(form.flow_cap, "compute")
        if network is not None:
            bar.set_bound(network.column_value, "column")
            bar.set_bound(network.value, "network")
        if start_flow > 0:
            bar.incumbent(start_flow, start_flow, ceiling)
        if start_flow >= ceiling * (1 - options.relative_gap):
            outcome, used, note = _proven_by_bound(start, start_flow, ceiling), "warm start", None
        else:
            try:
                # the solver's F never exceeds the lowest bound, so it can stop when an incumbent meets it
                searched = dataclasses.replace(form, flow_cap=ceiling)
                outcome, used, note = _run_backend(solver, searched, start, verify, bar, run, options.log,
                                                   options.formulation)
            except KeyboardInterrupt:  # Ctrl-C before the backend's own handler runs (model building)
                outcome, used, note = SolveOutcome(None, 0.0, "unknown", ceiling, "interrupted"), solver, None
    best, best_flow = (outcome.placement, outcome.max_flow) if outcome.max_flow > start_flow else (start, start_flow)
    if best is None or best_flow <= 0:
        raise InfeasiblePlacement(_no_flow_message(outcome))
    bounds = {"solver": outcome.bound, "compute": form.flow_cap,
              "column": network.column_value if network else math.inf,
              "network": network.value if network and network.value < network.column_value else math.inf}
    kind = min(bounds, key=lambda k: (bounds[k], TIE_ORDER.index(k)))
    details = _details(form, used, outcome, best_flow, bounds[kind], start_flow, bar, run, note, started, options)
    details["bound_kind"] = BOUND_KINDS[kind]
    details["bounds_tokens_per_s"] = {k: round(v, 6) if math.isfinite(v) else None for k, v in bounds.items()}
    if network is not None:
        details["network_bound"] = {"note": network.note, "regions": [list(r) for r in network.regions],
                                    "threshold_tokens_per_s": None if network.threshold is None
                                    else round(network.threshold, 6)}
    return PlacementResult(best, options.partial_inference, details)


NETWORK_SHARE = 0.5  # of the time limit the network bound may take (the solver keeps the rest to search)
TIE_ORDER = ("network", "compute", "column", "solver")  # equal bounds: name the argument, not the solver echoing it
BOUND_KINDS = {  # what the reported bound is (details.bound_kind)
    "solver": "solver (the MILP's proven bound)",
    "compute": "compute (clipping: layer-tokens/s of the nodes at their best sizes)",
    "column": "column (every layer's nodes reach the flow together; docs/milp.md)",
    "network": "network (column bound + every route crosses a slow link, so two nodes share a layer; docs/milp.md)",
}


def _run_backend(solver, form, start, verify, bar, run, log, variant) -> tuple[SolveOutcome, str, str | None]:
    if solver == "gurobi":
        from vllm_helix.planner.milp.gurobi import GurobiSizeLimit, solve_gurobi

        try:
            return solve_gurobi(form, start, verify, bar, **run), "gurobi", None
        except (GurobiSizeLimit, SolverUnavailable) as exc:
            note = f"gurobi unusable ({exc}); falling back to CP-SAT"
            print(note, file=log or sys.stderr)
            bar.solver = "cpsat"
    else:
        note = None
    from vllm_helix.planner.milp.cpsat import solve_cpsat

    return solve_cpsat(form, start, verify, bar, variant=variant, **run), "cpsat", note


def _proven_by_bound(start: Placement | None, start_flow: float, bound: float) -> SolveOutcome:
    """The warm start already meets the capacity (helix-spec §9 clipping) or network bound: optimal, no search."""
    return SolveOutcome(start, start_flow, "optimal", bound, "solved")


def _no_flow_message(outcome: SolveOutcome) -> str:
    if outcome.stopped_by == "solved":
        return "no placement routes tokens from the coordinator through every layer and back (check the links)"
    return (f"no placement with a non-zero max flow found before the solver stopped ({outcome.stopped_by}); "
            "raise the time or work limit")


def _details(form: Formulation, used: str, outcome: SolveOutcome, best_flow: float, bound: float,
             start_flow: float, bar: Progress, run: dict, note: str | None, started: float,
             options: SolverOptions) -> dict[str, Any]:
    gap = max(0.0, (bound - best_flow) / best_flow) if best_flow > 0 else None
    details: dict[str, Any] = {
        "solver": used, "status": outcome.status, "stopped_by": outcome.stopped_by,
        "max_flow_tokens_per_s": round(best_flow, 6), "bound_tokens_per_s": round(bound, 6),
        "gap": None if gap is None else round(gap, 6), "wall_time_s": round(time.monotonic() - started, 3),
        "formulation_variant": options.formulation, "threads": run["threads"], "seed": run["seed"],
        "time_limit_s": options.time_limit_s, "work_limit": options.work_limit,
        "min_layers_per_node": form.min_layers,
        "reproducible": options.reproducible() and outcome.stopped_by != "time limit" and used != "gurobi",
        "warm_start_tokens_per_s": round(start_flow, 6), "formulation": describe(form),
        "flow_unit": f"1/{form.scale} tok/s inside the solver; reported numbers are the evaluator's",
        "incumbents": [vars(i) for i in bar.history],
    }
    if note:
        details["fallback"] = note
    return details
