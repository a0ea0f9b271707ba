"""Optional gurobipy backend for the same formulation (used with a full Gurobi license).

pip's gurobipy ships a size-limited license (2000 variables / 2000 constraints) that fails at optimize()
with error 10010 "Model too large for size-limited license"; that is raised as GurobiSizeLimit so the
caller falls back to CP-SAT with a one-line explanation.
"""

from __future__ import annotations

import itertools
from typing import Any

from vllm_helix.errors import SolverUnavailable
from vllm_helix.planner.cluster import COORDINATOR
from vllm_helix.planner.milp.cpsat import SolveOutcome, Verify
from vllm_helix.planner.milp.formulation import Formulation, integer_flow, placement_of
from vllm_helix.planner.milp.progress import Progress
from vllm_helix.planner.placement import Placement

SIZE_LIMIT_ERRNO = 10010


class GurobiSizeLimit(SolverUnavailable):
    """gurobipy's license refuses a model this large (pip's size-limited license)."""


def _gurobipy():
    try:
        import gurobipy
    except ImportError:
        raise SolverUnavailable("gurobipy is not installed") from None
    return gurobipy


def solve_gurobi(
    form: Formulation, hint: Placement | None, verify: Verify, progress: Progress, *,
    threads: int, time_limit_s: float, seed: int, relative_gap: float, work_limit: float | None = None,
) -> SolveOutcome:
    gp = _gurobipy()
    try:
        env = gp.Env(params={"OutputFlag": 0})
    except gp.GurobiError as exc:
        raise SolverUnavailable(f"no usable Gurobi license: {exc}") from None
    with env, gp.Model("helix-placement", env=env) as m:
        x, d, f = _build(gp, m, form)
        if hint is not None:
            _start(form, hint, x, d, f)
        m.Params.Threads, m.Params.TimeLimit, m.Params.Seed = threads, time_limit_s, seed
        m.Params.MIPGap = relative_gap
        if work_limit is not None:
            m.Params.WorkLimit = work_limit
        state: dict[str, Any] = {"best": None, "flow": 0.0}
        try:
            m.optimize(_callback(gp, form, x, verify, progress, state))
        except gp.GurobiError as exc:
            if exc.errno == SIZE_LIMIT_ERRNO or "size-limited" in str(exc):
                raise GurobiSizeLimit(f"model too large for the size-limited license: {exc}") from None
            raise SolverUnavailable(f"Gurobi failed: {exc}") from None
        status = {gp.GRB.OPTIMAL: "optimal", gp.GRB.INTERRUPTED: "interrupted", gp.GRB.TIME_LIMIT: "time limit",
                  gp.GRB.INFEASIBLE: "infeasible"}.get(m.Status, f"status {m.Status}")
        bound = m.ObjBound / form.scale if m.SolCount else progress.bound
        stopped = {"optimal": "solved", "infeasible": "solved"}.get(status, status)
        return SolveOutcome(state["best"], state["flow"], status, bound, stopped)


def _build(gp, m, form: Formulation):
    grb = gp.GRB
    x = {(n, s, k): m.addVar(vtype=grb.BINARY, name=f"x_{n}_{s}_{k}") for n in form.nodes for s, k in form.choices[n]}
    g = {key: m.addVar(ub=form.throughput[key[0]][key[2] - 1], name=f"g_{key[0]}_{key[1]}_{key[2]}") for key in x}
    d = {(a.src, a.dst): m.addVar(vtype=grb.BINARY) for a in form.arcs}
    f = {(a.src, a.dst): m.addVar(ub=a.capacity) for a in form.arcs}
    total = m.addVar(ub=form.flow_cap * form.scale + 1, name="F")
    for key, var in x.items():
        m.addConstr(g[key] <= form.throughput[key[0]][key[2] - 1] * var)
    for n in form.nodes:
        m.addConstr(gp.quicksum(x[n, s, k] for s, k in form.choices[n]) <= 1)
        through = gp.quicksum(g[n, s, k] for s, k in form.choices[n])
        m.addConstr(gp.quicksum(v for (a, b), v in f.items() if b == n) == through)
        m.addConstr(gp.quicksum(v for (a, b), v in f.items() if a == n) == through)
    for a in form.arcs:
        arc = (a.src, a.dst)
        m.addConstr(f[arc] <= a.capacity * d[arc])
        _enable(gp, m, form, x, arc, d[arc])
    m.addConstr(total == gp.quicksum(v for (a, _), v in f.items() if a == COORDINATOR))
    m.addConstr(total == gp.quicksum(v for (_, b), v in f.items() if b == COORDINATOR))
    if form.options.layer_cuts:
        _layer_cuts(gp, m, form, g, total)
    for group in form.symmetry_classes:
        width = max(len(form.throughput[n]) for n in group) + 1
        keys = [gp.quicksum((1 + s * width + k) * x[n, s, k] for s, k in form.choices[n]) for n in group]
        for a, b in itertools.pairwise(keys):
            m.addConstr(a >= b)
    m.setObjective(total, grb.MAXIMIZE)
    return x, d, f


def _enable(gp, m, form: Formulation, x, key, d) -> None:
    src, dst = key
    if src == COORDINATOR:
        m.addConstr(d <= gp.quicksum(x[dst, s, k] for s, k in form.choices[dst] if s == 0))
        return
    if dst == COORDINATOR:
        m.addConstr(d <= gp.quicksum(x[src, s, k] for s, k in form.choices[src] if s + k == form.num_layers))
        return
    start = gp.quicksum(s * x[dst, s, k] for s, k in form.choices[dst])
    end_src = gp.quicksum((s + k) * x[src, s, k] for s, k in form.choices[src])
    m.addConstr(d <= gp.quicksum(x[src, s, k] for s, k in form.choices[src]))
    m.addConstr(d <= gp.quicksum(x[dst, s, k] for s, k in form.choices[dst]))
    big = form.num_layers + 1
    if form.partial:
        end_dst = gp.quicksum((s + k) * x[dst, s, k] for s, k in form.choices[dst])
        m.addConstr(start - end_src <= big * (1 - d))
        m.addConstr(end_src + 1 - end_dst <= big * (1 - d))
    else:
        m.addConstr(end_src - start <= big * (1 - d))
        m.addConstr(start - end_src <= big * (1 - d))


def _layer_cuts(gp, m, form: Formulation, g, total) -> None:
    covering = [[] for _ in range(form.num_layers)]
    ending = [[] for _ in range(form.num_layers + 1)]
    starting = [[] for _ in range(form.num_layers + 1)]
    for (_node, s, k), var in g.items():
        for layer in range(s, s + k):
            covering[layer].append(var)
        ending[s + k].append(var)
        starting[s].append(var)
    for layer in range(form.num_layers):
        expr = gp.quicksum(covering[layer])
        m.addConstr(expr >= total if form.partial else expr == total)
    if not form.partial:
        for b in range(1, form.num_layers):
            m.addConstr(gp.quicksum(ending[b]) == gp.quicksum(starting[b]))


def _start(form: Formulation, hint: Placement, x, d, f) -> None:
    _, arc_flow = integer_flow(form, hint)
    for (n, s, k), var in x.items():
        rng = hint[n]
        var.Start = int(rng is not None and (rng.start, rng.size) == (s, k))
    for key in d:
        d[key].Start = int(arc_flow.get(key, 0) > 0)
        f[key].Start = arc_flow.get(key, 0)


def _callback(gp, form: Formulation, x, verify: Verify, progress: Progress, state: dict):
    keys, variables = list(x), list(x.values())

    def callback(model, where) -> None:
        if where == gp.GRB.Callback.MIPSOL:
            values = model.cbGetSolution(variables)
            chosen = {key[0]: (key[1], key[2]) for key, v in zip(keys, values, strict=True) if v > 0.5}
            placement = placement_of({n: chosen.get(n) for n in form.nodes})
            flow = verify(placement)
            if flow > state["flow"]:
                state["best"], state["flow"] = placement, flow
            progress.incumbent(flow, model.cbGet(gp.GRB.Callback.MIPSOL_OBJ) / form.scale,
                               model.cbGet(gp.GRB.Callback.MIPSOL_OBJBND) / form.scale)
        elif where == gp.GRB.Callback.MIP:
            progress.set_bound(model.cbGet(gp.GRB.Callback.MIP_OBJBND) / form.scale)

    return callback
