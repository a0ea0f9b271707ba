"""OR-Tools CP-SAT backend: the interval formulation as a CP-SAT model, solved anytime.

All flows and capacities are integers in units of 1/scale tokens/s (CP-SAT takes integer coefficients
only); incumbents are re-scored by the evaluator before they are shown or kept.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ortools.sat.python import cp_model

from vllm_helix.planner.cluster import COORDINATOR
from vllm_helix.planner.milp.formulation import Formulation, integer_flow, placement_of
from vllm_helix.planner.milp.progress import Progress
from vllm_helix.planner.placement import Placement

Verify = Callable[[Placement], float]


@dataclass
class SolveOutcome:
    placement: Placement | None  # best verified placement the solver found (None: none better than nothing)
    max_flow: float  # its verified max flow, tokens/s
    status: str  # optimal | feasible | infeasible | unknown, as the solver says
    bound: float  # tokens/s, the solver's proven upper bound on the model's objective
    stopped_by: str  # solved | time limit | interrupted


@dataclass
class _Vars:
    x: dict[tuple[str, int, int], cp_model.IntVar]
    g: dict[tuple[str, int, int], cp_model.IntVar]
    d: dict[tuple[str, str], cp_model.IntVar]
    f: dict[tuple[str, str], cp_model.IntVar]
    total: cp_model.IntVar
    start: dict[str, cp_model.IntVar] | None = None  # s_i (0 when unused), channelled from x
    end: dict[str, cp_model.IntVar] | None = None  # e_i (0 when unused)
    length: dict[str, dict[int, cp_model.IntVar]] | None = None  # compact model: b_ik = [node i holds k layers]
    node_flow: dict[str, Any] | None = None  # tokens through node i (variable or sum of interval flows)


def build_model(form: Formulation, variant: str = "compact") -> tuple[cp_model.CpModel, _Vars]:
    """CP-SAT model: ``compact`` (start + length booleans, small, searches well) or ``interval``
    (one boolean per (start, length), per-layer cuts, tighter LP but ~20x larger)."""
    if variant == "interval":
        return _build_interval(form)
    m = cp_model.CpModel()
    v = _Vars({}, {}, {}, {}, m.NewIntVar(0, int(form.flow_cap * form.scale) + 1, "F"))
    v.start, v.end, v.length, v.node_flow = {}, {}, {}, {}
    for n in form.nodes:
        ks = sorted({k for _, k in form.choices[n]})
        starts = sorted({s for s, _ in form.choices[n]})
        b = v.length[n] = {k: m.NewBoolVar(f"b_{n}_{k}") for k in ks}
        used = m.NewBoolVar(f"u_{n}")
        m.Add(sum(b.values()) == used)
        s_var = v.start[n] = m.NewIntVarFromDomain(cp_model.Domain.FromValues(sorted({0, *starts})), f"s_{n}")
        e_var = v.end[n] = m.NewIntVar(0, form.num_layers, f"e_{n}")
        m.Add(e_var == s_var + sum(k * bk for k, bk in b.items()))
        m.Add(s_var == 0).OnlyEnforceIf(used.Not())
        if len(form.choices[n]) == 1:  # pinned
            m.Add(s_var == form.choices[n][0][0]).OnlyEnforceIf(used)
        flow = v.node_flow[n] = m.NewIntVar(0, max(form.throughput[n]), f"phi_{n}")
        m.Add(flow <= sum(form.throughput[n][k - 1] * bk for k, bk in b.items()))
    _arcs_and_flow(m, form, v)
    _symmetry(m, form, v)
    m.Maximize(v.total)
    return m, v


def _arcs_and_flow(m: cp_model.CpModel, form: Formulation, v: _Vars) -> None:
    for arc in form.arcs:
        key = (arc.src, arc.dst)
        d = v.d[key] = m.NewBoolVar(f"d_{arc.src}_{arc.dst}")
        f = v.f[key] = m.NewIntVar(0, arc.capacity, f"f_{arc.src}_{arc.dst}")
        m.Add(f <= arc.capacity * d)
        _enable(m, form, v, arc.src, arc.dst, d)
    _conservation(m, form, v)


def _build_interval(form: Formulation) -> tuple[cp_model.CpModel, _Vars]:
    m = cp_model.CpModel()
    v = _Vars({}, {}, {}, {}, m.NewIntVar(0, int(form.flow_cap * form.scale) + 1, "F"))
    for n in form.nodes:
        for s, k in form.choices[n]:
            cap = form.throughput[n][k - 1]
            x = v.x[n, s, k] = m.NewBoolVar(f"x_{n}_{s}_{k}")
            g = v.g[n, s, k] = m.NewIntVar(0, cap, f"g_{n}_{s}_{k}")
            m.Add(g <= cap * x)
        m.AddAtMostOne(v.x[n, s, k] for s, k in form.choices[n])
    v.start = {n: m.NewIntVar(0, form.num_layers, f"s_{n}") for n in form.nodes}
    v.end = {n: m.NewIntVar(0, form.num_layers, f"e_{n}") for n in form.nodes}
    for n in form.nodes:
        m.Add(v.start[n] == sum(s * v.x[n, s, k] for s, k in form.choices[n]))
        m.Add(v.end[n] == sum((s + k) * v.x[n, s, k] for s, k in form.choices[n]))
    v.node_flow = {n: sum(v.g[n, s, k] for s, k in form.choices[n]) for n in form.nodes}
    _arcs_and_flow(m, form, v)
    if form.options.layer_cuts:
        _layer_cuts(m, form, v)
    _symmetry(m, form, v)
    m.Maximize(v.total)
    return m, v


def _starts_at(form: Formulation, v: _Vars, n: str, layer: int) -> list:
    return [v.x[n, s, k] for s, k in form.choices[n] if s == layer]


def _ends_at(form: Formulation, v: _Vars, n: str, layer: int) -> list:
    return [v.x[n, s, k] for s, k in form.choices[n] if s + k == layer]


def _start(form: Formulation, v: _Vars, n: str):
    return v.start[n]  # type: ignore[index]


def _end(form: Formulation, v: _Vars, n: str):
    return v.end[n]  # type: ignore[index]


def _used(form: Formulation, v: _Vars, n: str):
    if v.length is not None:
        return sum(v.length[n].values())
    return sum(v.x[n, s, k] for s, k in form.choices[n])


def _enable(m: cp_model.CpModel, form: Formulation, v: _Vars, src: str, dst: str, d) -> None:
    """An arc may carry flow only if the layer-connectivity rule (helix-spec §3.1) holds."""
    if src == COORDINATOR:
        if v.length is not None:
            m.Add(_start(form, v, dst) == 0).OnlyEnforceIf(d)
            m.Add(d <= _used(form, v, dst))
        else:
            m.Add(d <= sum(_starts_at(form, v, dst, 0)))
        return
    if dst == COORDINATOR:
        if v.length is not None:
            m.Add(_end(form, v, src) == form.num_layers).OnlyEnforceIf(d)
        else:
            m.Add(d <= sum(_ends_at(form, v, src, form.num_layers)))
        return
    m.Add(d <= _used(form, v, src))
    m.Add(d <= _used(form, v, dst))
    if form.partial:
        m.Add(_start(form, v, dst) <= _end(form, v, src)).OnlyEnforceIf(d)
        m.Add(_end(form, v, src) + 1 <= _end(form, v, dst)).OnlyEnforceIf(d)
    else:
        m.Add(_end(form, v, src) == _start(form, v, dst)).OnlyEnforceIf(d)


def _conservation(m: cp_model.CpModel, form: Formulation, v: _Vars) -> None:
    share = form.options.max_node_share
    for n in form.nodes:
        through = v.node_flow[n]  # type: ignore[index]
        m.Add(sum(f for (a, b), f in v.f.items() if b == n) == through)
        m.Add(sum(f for (a, b), f in v.f.items() if a == n) == through)
        if share is not None and share < 1:  # parallel routes: no node carries more than share * F
            m.Add(1000 * through <= round(1000 * share) * v.total)
    m.Add(v.total == sum(f for (a, _), f in v.f.items() if a == COORDINATOR))
    m.Add(v.total == sum(f for (_, b), f in v.f.items() if b == COORDINATOR))


def _layer_cuts(m: cp_model.CpModel, form: Formulation, v: _Vars) -> None:
    """Every token passes every layer once: intervals covering layer l carry F in total (>= F with partial
    inference), and with exact chaining the flow ending at each boundary equals the flow starting there."""
    covering: list[list] = [[] for _ in range(form.num_layers)]
    ending: list[list] = [[] for _ in range(form.num_layers + 1)]
    starting: list[list] = [[] for _ in range(form.num_layers + 1)]
    for (_node, s, k), g in v.g.items():
        for layer in range(s, s + k):
            covering[layer].append(g)
        ending[s + k].append(g)
        starting[s].append(g)
    for layer in range(form.num_layers):
        if form.partial:
            m.Add(sum(covering[layer]) >= v.total)
        else:
            m.Add(sum(covering[layer]) == v.total)
    if not form.partial:
        for b in range(1, form.num_layers):
            m.Add(sum(ending[b]) == sum(starting[b]))


def _symmetry(m: cp_model.CpModel, form: Formulation, v: _Vars) -> None:
    """Interchangeable nodes take their (start, length) keys in non-increasing order (unused = 0, last)."""
    for group in form.symmetry_classes:
        width = max(len(form.throughput[n]) for n in group) + 2
        keys = [_key(form, v, n, width) for n in group]
        for a, b in itertools.pairwise(keys):
            m.Add(a >= b)


def _key(form: Formulation, v: _Vars, n: str, width: int):
    if v.length is not None:
        return width * v.start[n] + sum((k + 1) * bk for k, bk in v.length[n].items())  # type: ignore[index]
    return sum((1 + s * width + k) * v.x[n, s, k] for s, k in form.choices[n])


def add_hint(m: cp_model.CpModel, form: Formulation, v: _Vars, placement: Placement) -> None:
    """Hint a complete solution: the placement's intervals and its integer max flow in the model's units."""
    value, arc_flow = integer_flow(form, placement)
    node_flow = {n: sum(f for (_, b), f in arc_flow.items() if b == n) for n in form.nodes}
    for n in form.nodes:
        rng = placement[n]
        if v.length is not None:
            for k, bk in v.length[n].items():
                m.AddHint(bk, int(rng is not None and rng.size == k))
            m.AddHint(v.start[n], rng.start if rng else 0)  # type: ignore[index]
            m.AddHint(v.end[n], rng.end if rng else 0)  # type: ignore[index]
            m.AddHint(v.node_flow[n], node_flow[n])  # type: ignore[index]
            continue
        for s, k in form.choices[n]:
            on = rng is not None and (rng.start, rng.size) == (s, k)
            m.AddHint(v.x[n, s, k], int(on))
            m.AddHint(v.g[n, s, k], node_flow[n] if on else 0)
    for key, f in v.f.items():
        m.AddHint(v.d[key], int(arc_flow.get(key, 0) > 0))
        m.AddHint(f, arc_flow.get(key, 0))
    m.AddHint(v.total, value)


def decode(form: Formulation, v: _Vars, value: Callable[[cp_model.IntVar], int]) -> Placement:
    chosen: dict[str, tuple[int, int]] = {}
    if v.length is not None:
        for n, b in v.length.items():
            k = sum(k * value(bk) for k, bk in b.items())
            if k:
                chosen[n] = (value(v.start[n]), k)  # type: ignore[index]
    for (n, s, k), x in v.x.items():
        if value(x):
            chosen[n] = (s, k)
    return placement_of({n: chosen.get(n) for n in form.nodes})


class _Callback(cp_model.CpSolverSolutionCallback):
    """Re-scores each incumbent with the evaluator and keeps the best verified placement."""

    def __init__(self, form: Formulation, v: _Vars, verify: Verify, progress: Progress):
        super().__init__()
        self.form, self.v, self.verify, self.progress = form, v, verify, progress
        self.best: Placement | None = None
        self.best_flow = 0.0

    def on_solution_callback(self) -> None:
        placement = decode(self.form, self.v, self.Value)
        flow = self.verify(placement)
        scale = self.form.scale
        if flow > self.best_flow:
            self.best, self.best_flow = placement, flow
        self.progress.incumbent(flow, self.ObjectiveValue() / scale, self.BestObjectiveBound() / scale)


def solve_cpsat(
    form: Formulation, hint: Placement | None, verify: Verify, progress: Progress, *,
    threads: int, time_limit_s: float, seed: int, relative_gap: float, work_limit: float | None = None,
    variant: str = "compact",
) -> SolveOutcome:
    """Solve until optimal, the work or time limit, the gap or Ctrl-C; return the best verified placement.

    With `work_limit` the search is deterministic (interleaved workers, stopped by CP-SAT's deterministic
    time), so the same model, seed, threads and limit give the same incumbents on any machine load."""
    m, v = build_model(form, variant)
    if hint is not None:
        add_hint(m, form, v, hint)
    solver = cp_model.CpSolver()
    p = solver.parameters
    p.num_workers = threads
    p.max_time_in_seconds, p.random_seed = time_limit_s, seed
    p.relative_gap_limit = relative_gap
    if work_limit is not None:
        p.interleave_search, p.max_deterministic_time = True, work_limit
    solver.best_bound_callback = lambda bound: progress.set_bound(bound / form.scale)
    callback = _Callback(form, v, verify, progress)
    interrupted = False
    try:
        status = solver.Solve(m, callback)
    except KeyboardInterrupt:
        interrupted, status = True, cp_model.UNKNOWN
    name = solver.StatusName(status).lower()
    bound = solver.BestObjectiveBound() / form.scale if not interrupted else progress.bound
    if status == cp_model.OPTIMAL:
        stopped = "solved"
    elif not interrupted and work_limit is not None and solver.ResponseProto().deterministic_time >= work_limit:
        stopped = "work limit"
    elif interrupted or solver.WallTime() < time_limit_s - 0.5:
        stopped = "interrupted" if interrupted or name != "infeasible" else "solved"
    else:
        stopped = "time limit"
    return SolveOutcome(callback.best, callback.best_flow, name, bound, stopped)
