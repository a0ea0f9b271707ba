"""Re-planning a changed cluster with few layer moves (`vllm-helix plan --previous plan.yaml`).

When a node goes or comes, planning from scratch may reshuffle every node's layers, and each layer a node
did not hold before must be loaded (read from disk, sent over the network) before it serves. A layer load
is one layer a node holds in the new placement but did not hold in the previous one. `replan` builds a few
candidates, from no moves to a fresh plan, and keeps the one with the fewest layer loads whose max flow is
within `tolerance` of the best candidate's:

* ``as-is``: the surviving nodes keep their layers, nothing is loaded (serves only if the gone nodes were
  redundant);
* ``keep``: the surviving nodes keep their layers (MILP pins) and the solver places the others (new and
  idle nodes) around them;
* ``bridge±w`` (when a gone node leaves layers that no surviving node holds): the nodes within w layers of
  such a gap may move as well, the others stay pinned; w grows until the max flow is within tolerance;
* ``scratch``: the MILP from scratch, with identical nodes (same GPU, memory, NICs, region) swapped so each
  keeps as much of its previous range as it can — at the same max flow (checked by the evaluator).

Everything shares one deadline, the MILP's time limit (`time_limit_s`): the from-scratch run may take
SCRATCH_SHARE of it, each pinned candidate what is left, and the candidates not started by then are skipped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vllm_helix.errors import ClusterSpecError, InfeasiblePlacement
from vllm_helix.planner.cluster import ClusterSpec, NodeSpec
from vllm_helix.planner.flow import max_flow
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.planner.plan import Plan, evaluate_plan
from vllm_helix.planner.throughput import NodeCapacity, capacity_table

BRIDGE_REACH = (1, 2, 4, 8, 16)  # layers around a gap whose nodes may move, tried in this order
SCRATCH_SHARE = 0.5  # of the time limit the from-scratch MILP may take: the pinned candidates need the rest
MIN_SOLVE_S = 0.5  # a pinned candidate is not started with less time left than this


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    placement: Placement
    max_flow: float
    layer_loads: int


@dataclass(frozen=True, slots=True)
class Replan:
    plan: Plan  # the chosen candidate, evaluated
    chosen: Candidate
    scratch_layer_loads: int  # what planning from scratch (as the solver returns it) would load
    candidates: tuple[Candidate, ...]
    stopped_by: str = "done"  # done | time limit (pinned candidates left untried)

    def summary(self) -> str:
        lines = [f"{'candidate':<10}{'max flow (tok/s)':>18}{'layer loads':>13}"]
        for c in self.candidates:
            mark = "  <- chosen" if c is self.chosen else ""
            lines.append(f"{c.name:<10}{c.max_flow:>18.3f}{c.layer_loads:>13}{mark}")
        lines.append(f"re-plan: {self.chosen.layer_loads} layer loads (from scratch: {self.scratch_layer_loads}), "
                     f"max flow {self.chosen.max_flow:.3f} tok/s")
        if self.stopped_by != "done":
            lines.append(f"stopped by the {self.stopped_by}: candidates with fewer loads may exist; raise --time-limit")
        return "\n".join(lines)


def layer_loads(previous: Placement, placement: Placement) -> int:
    """Layers each node holds in `placement` but not in `previous`, summed over nodes."""
    return sum(rng.size - _overlap(rng, previous[name]) for name, rng in placement.ranges.items())


def _overlap(a: LayerRange | None, b: LayerRange | None) -> int:
    return max(0, min(a.end, b.end) - max(a.start, b.start)) if a and b else 0


def check_previous_model(previous: ModelSpec, model: ModelSpec, where: str) -> None:
    """The previous plan serves the model being planned: another model's layer ranges mean nothing here."""
    if (previous.name, previous.num_layers) != (model.name, model.num_layers):
        raise ClusterSpecError(
            f"{where}: a plan for model {previous.name!r} ({previous.num_layers} layers), not for "
            f"{model.name!r} ({model.num_layers} layers); pass --model {previous.name} or drop --previous")


def replan(
    previous: Placement, cluster: ClusterSpec, model: ModelSpec, *, throughput: str = "reference",
    tolerance: float = 0.05, partial_inference: bool = False, **milp_options: Any,
) -> Replan:
    """The candidate with the fewest layer loads within `tolerance` of the best max flow (see module doc),
    found within the MILP options' time limit (`time_limit_s`), which every solver run shares."""
    from vllm_helix.planner.milp import solve_milp
    from vllm_helix.planner.milp.options import SolverOptions

    if not 0 <= tolerance < 1:
        raise InfeasiblePlacement(f"the move tolerance must be in [0, 1), got {tolerance}")
    if beyond := [(n, r) for n, r in previous.ranges.items() if r.end > model.num_layers]:
        name, rng = beyond[0]
        raise InfeasiblePlacement(f"the previous placement gives {name} layers [{rng.start}, {rng.end}), beyond "
                                  f"the model's {model.num_layers}: it is a placement of another model")
    deadline = time.monotonic() + SolverOptions.from_kwargs(**milp_options).time_limit_s  # checks the options too
    capacities = capacity_table(cluster, model, throughput)
    kept = {n: r for n, r in previous.ranges.items() if n in capacities and r.size <= capacities[n].max_layers}

    def evaluate(name: str, placement: Placement) -> Candidate:
        value = max_flow(cluster, model, placement, capacities=capacities, partial_inference=partial_inference).value
        return Candidate(name, placement, value, layer_loads(previous, placement))

    def solve(share: float = 1.0, **extra: Any) -> Placement:
        left = max(0.1, share * (deadline - time.monotonic()))  # every run ends by the shared deadline
        options = {"partial_inference": partial_inference, **milp_options, "time_limit_s": left, **extra}
        return solve_milp(cluster, model, capacities, **options).placement

    scratch = evaluate("scratch", solve(SCRATCH_SHARE))
    stopped_by = "done"
    candidates = [evaluate("as-is", Placement(kept))]
    uncovered = sorted(set(range(model.num_layers)) - {k for r in kept.values() for k in range(r.start, r.end)})
    for reach in (0, *(BRIDGE_REACH if uncovered else ())):
        # reach 0 ("keep"): every surviving node pinned; reach w ("bridge±w"): nodes within w layers of a
        # layer no surviving node holds are free to move too, the rest stay pinned
        pins = {n: (r.start, r.end) for n, r in kept.items()
                if not reach or not any(r.start - reach <= u < r.end + reach for u in uncovered)}
        if deadline - time.monotonic() < MIN_SOLVE_S:
            stopped_by = "time limit"
            break
        try:
            found = evaluate(f"bridge±{reach}" if reach else "keep", solve(pins=pins, progress=False))
        except InfeasiblePlacement:
            continue  # the pinned ranges leave no feasible placement for the others
        candidates.append(found)
        if found.max_flow >= scratch.max_flow * (1 - tolerance):
            break
    relabeled = evaluate("scratch", _keep_ranges_on_twins(scratch.placement, previous, cluster, capacities))
    candidates.append(relabeled if relabeled.max_flow >= scratch.max_flow * (1 - 1e-9) else scratch)
    best_flow = max(c.max_flow for c in candidates)
    if best_flow <= 0:
        raise InfeasiblePlacement("no placement routes tokens through every layer on the changed cluster")
    good = [c for c in candidates if c.max_flow >= best_flow * (1 - tolerance)]
    chosen = min(good, key=lambda c: (c.layer_loads, -c.max_flow))
    details = {"previous_layer_loads": {"chosen": chosen.layer_loads, "from_scratch": scratch.layer_loads},
               "replan_candidate": chosen.name, "move_tolerance": tolerance, "replan_stopped_by": stopped_by}
    plan = evaluate_plan(cluster, model, chosen.placement, f"replan ({chosen.name})", throughput=throughput,
                         partial_inference=partial_inference, details=details)
    return Replan(plan, chosen, scratch.layer_loads, tuple(candidates), stopped_by)


def _twin_key(node: NodeSpec) -> tuple:
    return (node.gpu, node.gpu_count, node.vram_bytes, node.nic_in_bytes_per_s, node.nic_out_bytes_per_s,
            node.region)


def _keep_ranges_on_twins(placement: Placement, previous: Placement, cluster: ClusterSpec,
                          capacities: Mapping[str, NodeCapacity]) -> Placement:
    """Swap ranges among identical nodes so each keeps as much of its previous range as it can (greedy by
    overlap, deterministic: ties keep the solver's assignment, then go in cluster order)."""
    groups: dict[tuple, list[str]] = {}
    for node in cluster.nodes:
        if capacities[node.name].max_layers:
            groups.setdefault(_twin_key(node), []).append(node.name)
    ranges: dict[str, LayerRange] = {}
    for names in groups.values():
        given = [placement[n] for n in names]  # the group's ranges (None = unused), to hand out again
        pairs = sorted((-_overlap(r, previous[n]), i != j, i, j)
                       for i, n in enumerate(names) for j, r in enumerate(given))
        taken_nodes: set[int] = set()
        taken_ranges: set[int] = set()
        for _, _, i, j in pairs:
            if i in taken_nodes or j in taken_ranges:
                continue
            taken_nodes.add(i)
            taken_ranges.add(j)
            kept = given[j]
            if kept is not None:
                ranges[names[i]] = kept
    order = {n: k for k, n in enumerate(placement.ranges)}  # keep the solver's order of ranges in the file
    return Placement(dict(sorted(ranges.items(), key=lambda item: order.get(item[0], len(order)))))
