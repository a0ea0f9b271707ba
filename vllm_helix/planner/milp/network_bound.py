"""Network-aware upper bound on every placement's max flow (the "column bound"); proof in docs/milp.md.

A flow F passes every layer once, and node i passes at most T_i(k_i) tokens/s through each of its k_i
layers, so the nodes covering any layer have capacities summing to >= F: each layer is a *column* of
nodes. Forgetting where layers sit, a placement becomes L columns, each with a minimal set of (node kind,
layer count) whose throughputs reach F, using each node with k layers in at most k columns. A small integer
program over those patterns says whether the cluster's nodes can fill L columns at F; it is at least as
strong as the compute ("clipping") bound and much stronger when a node's best size falls just short of F.

The network adds one constraint: when the regions joined by links faster than theta each hold fewer than
L layers, every route crosses a link of <= theta tokens/s; if F > theta, that link cannot carry the whole
flow past its layer boundary alone, so some layer is covered by two nodes: sum_i k_i >= L + 1. On
3cluster24 this is what separates the compute bound (2045.6: every node at its best size, one pipeline of
exactly 80 layers, no room for a second node anywhere) from the optimum.

Feasibility is monotone in F (a filling at F' > F is one at F after shrinking each column to a minimal
set), so the bound is found by bisection; every value reported is an F the solver proved infeasible.
Exact chaining only (with partial inference a node may run part of its range).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ortools.sat.python import cp_model

from vllm_helix.errors import InfeasiblePlacement
from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.planner.milp.formulation import Formulation, link_capacities
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.throughput import NodeCapacity

MAX_PATTERNS = 50_000  # more minimal columns than this ...
MAX_STEPS = 2_000_000  # ... or more partial columns tried: give up on F (it counts as reachable)
DEADLINE_EVERY = 10_000  # partial columns between looks at the clock
SOLVE_LIMIT_S = 5.0  # per feasibility check; an unproven check counts as reachable
TOLERANCE = 1e-6  # bisection stops when the interval is this share of the bound ...
MERGE_SPREADS = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # merging nearly equal node tables ...
MAX_TYPES = 40  # ... until at most this many (kind, layer count) remain
TIME_LIMIT_S = 20.0  # ... or after this long (clusters with many distinct node tables), or at the caller's deadline
MIN_FLOW = 1e-6  # tokens/s: a bound below this is "nothing flows" (the MILP works in 0.01 tok/s)


@dataclass(frozen=True, slots=True)
class Kind:
    """Interchangeable nodes: same throughput table, same allowed layer counts."""

    throughput: tuple[float, ...]  # T(k), index k - 1
    allowed: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class NetworkBound:
    value: float  # tokens/s that no placement reaches: the column bound with the network constraint
    column_value: float  # the column bound alone (no network argument)
    threshold: float | None  # tokens/s of the fastest slow link; None when a fast region holds the model
    regions: tuple[tuple[str, ...], ...]  # nodes joined by links faster than the threshold
    note: str  # which argument gave `value`, one line


def network_bound(
    form: Formulation,
    cluster: ClusterSpec,
    model: ModelSpec,
    capacities: Mapping[str, NodeCapacity],
    tolerance: float = TOLERANCE,
    deadline: float | None = None,
) -> NetworkBound:
    """Upper bound on the max flow of every placement `form` allows (its pins, excludes, layer limits).

    With a `deadline` (time.monotonic()) it returns by then, with the weaker bound proven so far.
    Raises InfeasiblePlacement for partial inference (not covered) or a tolerance outside (0, 1).
    """
    if form.partial:
        raise InfeasiblePlacement(
            "the network-aware bound assumes exact chaining; it does not cover --partial-inference"
        )
    if not 0 < tolerance < 1:
        raise InfeasiblePlacement(f"bound tolerance must be in (0, 1), got {tolerance}")
    kinds, rounding = node_kinds(form, capacities)
    layers = {n: max(k for _, k in form.choices[n]) for n in form.nodes}
    links = {(a, b): c for (a, b), c in link_capacities(cluster, model).items() if a in layers and b in layers}
    threshold, regions = slow_link_threshold(links, layers, form.num_layers)
    top = form.flow_cap * (1 + 1e-9) + 1e-9  # above the compute bound: never reachable
    column = min(form.flow_cap, smallest_unreachable(kinds, form.num_layers, 0.0, top, False, tolerance, deadline))
    if threshold is None or threshold >= column:
        why = "a region of fast links holds the whole model" if threshold is None else "the slow links are fast"
        return NetworkBound(column, column, threshold, regions, f"column bound ({why}){_rounded(rounding)}")
    value = smallest_unreachable(kinds, form.num_layers, threshold, column, True, tolerance, deadline)
    return NetworkBound(
        value,
        column,
        threshold,
        regions,
        f"column bound + every route crosses a link of <= {threshold:.1f} tok/s{_rounded(rounding)}",
    )


def _rounded(rounding: float) -> str:
    return f"; node tables within {rounding:.1%} merged (their largest T(k))" if rounding else ""


def node_kinds(form: Formulation, capacities: Mapping[str, NodeCapacity]) -> tuple[dict[Kind, int], float]:
    """How many usable nodes of each kind the formulation has, and the spread merged: measured tables differ
    a little from node to node, so nodes with the same layer counts whose T(k) lie within a ratio 1 + r of
    each other form one kind with their largest T(k) (a relaxation: every real column still reaches F), with
    the smallest r in MERGE_SPREADS that leaves at most MAX_TYPES (kind, k)."""
    tables = {n: tuple(capacities[n].tokens_per_s[: len(form.throughput[n])]) for n in form.nodes}
    allowed = {n: tuple(sorted({k for _, k in form.choices[n]})) for n in form.nodes}
    for spread in MERGE_SPREADS:
        groups: list[tuple[tuple[int, ...], list[float], list[float], list[str]]] = []  # allowed, max, min, nodes
        for n in sorted(form.nodes, key=lambda n: (allowed[n], tables[n])):
            group = next((g for g in groups if g[0] == allowed[n] and _close(g, tables[n], spread)), None)
            if group is None:
                groups.append((allowed[n], list(tables[n]), list(tables[n]), [n]))
                continue
            group[1][:] = map(max, group[1], tables[n])
            group[2][:] = map(min, group[2], tables[n])
            group[3].append(n)
        kinds = {Kind(tuple(hi), ks): len(names) for ks, hi, _, names in groups}
        if sum(len(kind.allowed) for kind in kinds) <= MAX_TYPES:
            break
    return kinds, spread


def _close(group, table: tuple[float, ...], spread: float) -> bool:
    _, hi, lo, _ = group
    return all(max(h, t) <= (1 + spread) * min(low, t) for h, low, t in zip(hi, lo, table, strict=True))


def slow_link_threshold(
    links: Mapping[tuple[str, str], float], layers: Mapping[str, int], num_layers: int
) -> tuple[float | None, tuple[tuple[str, ...], ...]]:
    """Smallest theta such that the regions of links faster than theta each hold < num_layers layers, and
    those regions; (None, regions of all links) when even that leaves a region holding the whole model."""
    names = list(layers)
    root = {n: n for n in names}
    held = dict(layers)  # region root -> layers its nodes hold at most

    def find(n: str) -> str:
        while root[n] != n:
            root[n] = root[root[n]]
            n = root[n]
        return n

    def regions() -> tuple[tuple[str, ...], ...]:
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(find(n), []).append(n)
        return tuple(tuple(g) for g in groups.values())

    if max(layers.values()) >= num_layers:
        return None, regions()
    for (a, b), cap in sorted(links.items(), key=lambda item: -item[1]):  # fastest links join first
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if held[ra] + held[rb] >= num_layers:  # this link, and every slower one, has to count as slow
            return cap, regions()
        root[rb] = ra
        held[ra] += held[rb]
    return None, regions()


def smallest_unreachable(
    kinds: Mapping[Kind, int], num_layers: int, low: float, high: float, crossing: bool, tolerance: float,
    deadline: float | None = None,
) -> float:
    """Bisection between `low` (not proven unreachable) and `high` (assumed unreachable); returns a flow
    proven unreachable, or `high`. Stops after TIME_LIMIT_S or at `deadline` with the lowest one proven so far,
    and below MIN_FLOW (nodes that cannot hold every layer: every flow is unreachable, the bisection would
    halve `high` down to 0.0, where the empty column "reaches" it, and spin there until the time limit)."""
    deadline = min(time.monotonic() + TIME_LIMIT_S, math.inf if deadline is None else deadline)
    if fills(kinds, num_layers, high, crossing, deadline) is not False:
        return high
    while high - low > tolerance * high and high > MIN_FLOW and time.monotonic() < deadline:
        mid = (low + high) / 2
        if fills(kinds, num_layers, mid, crossing, deadline) is False:
            high = mid
        else:
            low = mid
    return high


def fills(kinds: Mapping[Kind, int], num_layers: int, flow: float, crossing: bool,
          deadline: float | None = None) -> bool | None:
    """Can the nodes fill `num_layers` columns of capacity >= flow (with `crossing`: and one column holding
    a second node)? False only when CP-SAT proves it impossible; None when undecided (or at `deadline`)."""
    started = time.monotonic()
    left = SOLVE_LIMIT_S if deadline is None else min(SOLVE_LIMIT_S, deadline - started)
    if left <= 0:
        return None
    types = sorted(((kind, k) for kind in kinds for k in kind.allowed), key=lambda t: -t[0].throughput[t[1] - 1])
    patterns = minimal_columns([kind.throughput[k - 1] for kind, k in types], [kind for kind, _ in types], kinds, flow,
                               deadline)
    if patterns is None:
        return None
    m = cp_model.CpModel()
    count = [m.NewIntVar(0, kinds[kind], f"m_{i}") for i, (kind, _) in enumerate(types)]  # nodes with k layers
    for kind, limit in kinds.items():
        m.Add(sum(c for c, (kd, _) in zip(count, types, strict=True) if kd == kind) <= limit)
    columns = [m.NewIntVar(0, num_layers, f"x_{p}") for p in range(len(patterns))]
    m.Add(sum(columns) == num_layers)
    use: list[list] = [[] for _ in types]
    for x, pattern in zip(columns, patterns, strict=True):
        for i in set(pattern):
            use[i].append(pattern.count(i) * x)
    for i, (_, k) in enumerate(types):
        m.Add(sum(use[i]) <= k * count[i])  # a node with k layers sits in at most k columns
    if crossing:
        m.Add(sum(k * c for c, (_, k) in zip(count, types, strict=True)) >= num_layers + 1)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.max_time_in_seconds = max(0.01, left - (time.monotonic() - started))
    status = solver.Solve(m)
    if status == cp_model.INFEASIBLE:
        return False
    return True if status in (cp_model.OPTIMAL, cp_model.FEASIBLE) else None


def minimal_columns(
    throughput: Sequence[float], kind_of: Sequence[Kind], limits: Mapping[Kind, int], flow: float,
    deadline: float | None = None,
) -> list[tuple[int, ...]] | None:
    """Multisets of type indices (types sorted by throughput, fastest first) whose throughputs reach `flow`
    and stop reaching it without their slowest member; at most `limits[kind]` nodes of a kind. None when
    there are more than MAX_PATTERNS (or the search takes more than MAX_STEPS, or runs past `deadline`)."""
    out: list[tuple[int, ...]] = []
    chosen: list[int] = []
    used: dict[Kind, int] = {}
    steps = [0]

    def extend(first: int, total: float) -> bool:
        steps[0] += 1
        if steps[0] > MAX_STEPS:
            return False
        if deadline is not None and not steps[0] % DEADLINE_EVERY and time.monotonic() > deadline:
            return False
        if total >= flow * (1 - 1e-12):  # float sums: never refute a flow a real column reaches
            out.append(tuple(chosen))
            return len(out) <= MAX_PATTERNS
        for i in range(first, len(throughput)):
            if used.get(kind_of[i], 0) >= limits[kind_of[i]]:
                continue
            used[kind_of[i]] = used.get(kind_of[i], 0) + 1
            chosen.append(i)
            ok = extend(i, total + throughput[i])
            chosen.pop()
            used[kind_of[i]] -= 1
            if not ok:
                return False
        return True

    return out if extend(0, 0.0) else None
