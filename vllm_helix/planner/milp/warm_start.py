"""Chain-respecting warm start: full pipelines of exactly chained nodes, balanced at a target throughput.

Petals-style windows overlap and carry no flow under exact chaining, so the MILP starts from its own
greedy instead: for a target tau, every node takes the most layers it can run at >= tau tokens/s, and
nodes are packed into pipelines that cover [0, L) exactly, first inside groups of nodes joined by fast
links (regions), then across them. Each candidate is scored with the formulation's integer max flow and
the best one wins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import networkx as nx

from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.planner.milp.formulation import Formulation, integer_flow, placement_of
from vllm_helix.planner.placement import Placement

FAST_LINK_SHARE = 0.5  # links at least half as fast as the fastest one join nodes into one group


def warm_start(form: Formulation, cluster: ClusterSpec) -> tuple[Placement, int]:
    """Best greedy placement and its scaled max flow (0 and an empty placement if none chains)."""
    fixed = {n: form.choices[n][0] for n in form.options.pins if n in form.choices}
    best, best_value = placement_of(dict(fixed)), integer_flow(form, placement_of(dict(fixed)))[0]
    for _tau, candidate in greedy_pipelines(form, cluster):
        value = integer_flow(form, candidate)[0]
        if value > best_value:
            best, best_value = candidate, value
    return best, best_value


def greedy_pipelines(form: Formulation, cluster: ClusterSpec) -> Iterator[tuple[int, Placement]]:
    """(tau, placement) for every target throughput tau, fastest first; distinct placements only."""
    free = [n for n in form.nodes if n not in form.options.pins]
    taus = sorted({t for n in free for t in form.throughput[n]}, reverse=True)
    yield from pipelines_by_size(form, cluster, taus,
                                 lambda n, tau: _layers_at(form.throughput[n], tau, form.min_layers))


def pipelines_by_size(form: Formulation, cluster: ClusterSpec, targets: Iterable[int],
                      layers_at: Callable[[str, int], int]) -> Iterator[tuple[int, Placement]]:
    """(target, placement) per target: every free node takes `layers_at(node, target)` layers (0 = unused) and
    the nodes are packed into exactly chained pipelines, fast-link groups first; distinct placements only,
    none that breaks the depth bound."""
    fixed = {n: form.choices[n][0] for n in form.options.pins if n in form.choices}
    free = [n for n in form.nodes if n not in fixed]
    groups = fast_groups(cluster, free)
    seen = set()
    for target in targets:
        sizes = {n: min(layers_at(n, target), len(form.throughput[n])) for n in free}
        assignment = dict(fixed)
        leftover: list[str] = []
        for group in groups:
            leftover += _pack(group, sizes, form.num_layers, assignment)
        _pack(leftover, sizes, form.num_layers, assignment)
        if any(sk is not None and sk not in form.choices[n] for n, sk in assignment.items()):
            continue  # a short last stage broke the depth bound
        key = tuple(sorted(assignment.items()))
        if key not in seen and len(assignment) > len(fixed):
            seen.add(key)
            yield target, placement_of(assignment)


def _layers_at(throughput: tuple[int, ...], tau: int, min_k: int = 1) -> int:
    return max((k for k, t in enumerate(throughput, 1) if t >= tau and k >= min_k), default=0)


def fast_groups(cluster: ClusterSpec, names: list[str]) -> list[list[str]]:
    bandwidth = {(lk.src, lk.dst): lk.bandwidth_bytes_per_s for lk in cluster.links}
    fastest = max((b for (s, d), b in bandwidth.items() if s in names and d in names), default=0.0)
    g = nx.Graph()
    g.add_nodes_from(names)
    g.add_edges_from((s, d) for (s, d), b in bandwidth.items()
                     if s in g and d in g and b >= FAST_LINK_SHARE * fastest and bandwidth.get((d, s), 0) > 0)
    return [sorted(c, key=names.index) for c in sorted(nx.connected_components(g), key=len, reverse=True)]


def _pack(names: list[str], sizes: Mapping[str, int], num_layers: int, assignment: dict) -> list[str]:
    """Fill pipelines from `names` (largest first, best fit for the last stage); return the unused ones."""
    pool = sorted((n for n in names if sizes[n] > 0), key=lambda n: -sizes[n])
    while sum(sizes[n] for n in pool) >= num_layers:
        stages, filled = [], 0
        while filled < num_layers:
            rest = num_layers - filled
            fits = [n for n in pool if sizes[n] >= rest]
            pick = min(fits, key=lambda n: sizes[n]) if fits else pool[0]
            pool.remove(pick)
            k = min(sizes[pick], rest)
            stages.append((pick, (filled, k)))
            filled += k
        assignment.update(stages)
    return pool + [n for n in names if sizes[n] == 0]


def with_replicas(form: Formulation, placement: Placement) -> Placement:
    """`placement` plus its unused nodes as parallel replicas of existing stages (the reference layout's
    branches): each unused node, largest first, takes the span between two existing stage boundaries that
    gives the highest max flow, ties to the span whose layers have the least capacity now. Replicas add KV
    room and split each stage's batch; routes stay as deep."""
    assignment = {n: (r.start, r.size) for n, r in placement.ranges.items() if n in form.choices}
    spare = sorted((n for n in form.nodes if n not in assignment), key=lambda n: -len(form.throughput[n]))
    for name in spare:
        bounds = sorted({s for s, _ in assignment.values()} | {s + k for s, k in assignment.values()})
        layer_cap = [0] * form.num_layers
        for n, (s, k) in assignment.items():
            for layer in range(s, s + k):
                layer_cap[layer] += form.throughput[n][k - 1]
        allowed = set(form.choices[name])
        options = [(a, b - a) for i, a in enumerate(bounds) for b in bounds[i + 1:] if (a, b - a) in allowed]
        if not options:
            continue
        assignment[name] = max(options, key=lambda sk: (
            integer_flow(form, placement_of({**assignment, name: sk}))[0], -min(layer_cap[sk[0]:sum(sk)])))
    return placement_of(assignment)
