"""Network-aware upper bound on every placement's max flow (the "crossing bound"); proof in docs/milp.md.

The compute ("clipping") bound counts layer-tokens: a flow F passes L layers, so L*F = sum_i k_i*f_i <=
sum_i A_i(F), A_i(F) = max_k k*min(T_i(k), F). Its slack S(F) = sum_i A_i(F) - L*F is what a placement
may lose against that ideal. On a cluster whose fast-link regions each hold fewer than L layers, every
route crosses a slow link; when F exceeds the fastest slow link, one hop cannot carry the whole flow past
that layer boundary, so two nodes cover one layer there and share its flow F. Two nodes sharing F lose at
least PL2(F) = min over node pairs of A_i(F) + A_j(F) - max_{f_i + f_j <= F} (a_i(f_i) + a_j(f_j)), with
a_i(f) = max_k k*min(T_i(k), f). So any F with S(F) < PL2(F) is out of reach: the bound is the smallest
such F found on a scan between the slow-link threshold and the compute bound.

Exact chaining only (with partial inference a node may join a route inside its range).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import networkx as nx

from vllm_helix.errors import InfeasiblePlacement
from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.planner.milp.formulation import Formulation, link_capacities
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.throughput import NodeCapacity

SCAN_STEPS = 400  # flows tried between the threshold and the compute bound ...
REFINE_STEPS = 64  # ... then between the first refuted one and the flow tried before it


@dataclass(frozen=True, slots=True)
class Table:
    """A node's allowed layer counts and their throughputs (tokens/s)."""

    throughput: tuple[float, ...]  # T(k), index k - 1
    allowed: tuple[int, ...]  # layer counts the node may take

    def area(self, flow: float) -> float:
        """a(f) = max_k k*min(T(k), f): the most layer-tokens/s the node passes carrying at most `flow`."""
        return max(k * min(self.throughput[k - 1], flow) for k in self.allowed)

    def kinks(self) -> tuple[float, ...]:
        """Flows where a(f) may bend: each T(k) and where two terms k*f and k'*T(k') meet."""
        return _kinks(self)


@functools.lru_cache(maxsize=256)
def _kinks(table: Table) -> tuple[float, ...]:
    ts = [table.throughput[k - 1] for k in table.allowed]
    pairs = itertools.product(table.allowed, zip(table.allowed, ts, strict=True))
    return tuple(sorted({*ts, *(k2 * t / k for k, (k2, t) in pairs)}))


@dataclass(frozen=True, slots=True)
class NetworkBound:
    value: float  # tokens/s no placement reaches (math.inf when the argument does not apply)
    threshold: float  # tokens/s of the fastest slow link (links at most this fast join no region)
    regions: tuple[tuple[str, ...], ...]  # nodes joined by links faster than the threshold
    note: str  # why the bound applies or not, one line


def crossing_bound(
    form: Formulation,
    cluster: ClusterSpec,
    model: ModelSpec,
    capacities: Mapping[str, NodeCapacity],
    steps: int = SCAN_STEPS,
) -> NetworkBound:
    """Upper bound on the max flow of every placement that `form` allows (its pins, excludes, layer limits).

    Raises InfeasiblePlacement for partial inference (not covered) or `steps` < 1.
    """
    if form.partial:
        raise InfeasiblePlacement(
            "the network-aware bound assumes exact chaining; it does not cover --partial-inference"
        )
    if steps < 1:
        raise InfeasiblePlacement(f"scan steps must be >= 1, got {steps}")
    tables = {
        n: Table(
            tuple(capacities[n].tokens_per_s[: len(form.throughput[n])]), tuple(sorted({k for _, k in form.choices[n]}))
        )
        for n in form.nodes
    }
    layers = {n: max(t.allowed) for n, t in tables.items()}
    links = {(a, b): c for (a, b), c in link_capacities(cluster, model).items() if a in tables and b in tables}
    threshold, regions = slow_link_threshold(links, layers, form.num_layers)
    if threshold is None:
        return NetworkBound(math.inf, math.inf, regions, "a region of fast links holds the whole model")
    if form.flow_cap <= threshold:
        return NetworkBound(math.inf, threshold, regions, "the slow links are faster than the compute bound")
    miss = first_miss(list(tables.values()), form.num_layers, threshold, form.flow_cap, steps)
    if miss is None:
        return NetworkBound(math.inf, threshold, regions, "the compute slack covers two nodes sharing a layer")
    return NetworkBound(
        miss, threshold, regions, f"every route crosses a link of <= {threshold:.1f} tok/s, so two nodes share a layer"
    )


def slow_link_threshold(
    links: Mapping[tuple[str, str], float], layers: Mapping[str, int], num_layers: int
) -> tuple[float | None, tuple[tuple[str, ...], ...]]:
    """Smallest theta such that the regions of links faster than theta each hold < num_layers layers, and
    those regions; (None, one region) when even the fastest links leave a region that holds the model."""
    if max(layers.values()) >= num_layers:
        return None, ((max(layers, key=layers.__getitem__),),)
    g = nx.Graph()
    g.add_nodes_from(layers)
    held = dict(layers)  # region root -> layers it holds
    root = {n: n for n in layers}

    def find(n: str) -> str:
        while root[n] != n:
            root[n] = root[root[n]]
            n = root[n]
        return n

    for (a, b), cap in sorted(links.items(), key=lambda item: -item[1]):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if held[ra] + held[rb] >= num_layers:  # this link (and every slower one) must count as slow
            return cap, _regions(g, layers)
        root[rb] = ra
        held[ra] += held[rb]
        g.add_edge(a, b)
    return None, _regions(g, layers)  # check_fits makes this unreachable: all nodes hold the model


def _regions(g: nx.Graph, order: Mapping[str, int]) -> tuple[tuple[str, ...], ...]:
    names = list(order)
    comps = sorted((sorted(c, key=names.index) for c in nx.connected_components(g)), key=lambda c: names.index(c[0]))
    return tuple(tuple(c) for c in comps)


def slack(tables: Sequence[Table], num_layers: int, flow: float) -> float:
    """S(F) = sum_i A_i(F) - L*F: the layer-tokens/s placements may lose against the compute bound."""
    return sum(t.area(flow) for t in tables) - num_layers * flow


def pair_loss(first: Table, second: Table, flow: float) -> float:
    """Least loss of two nodes whose flows add up to at most `flow` (they cover one layer together)."""
    cuts = {0.0, flow}
    cuts.update(f for f in first.kinks() if 0 < f < flow)
    cuts.update(flow - f for f in second.kinks() if 0 < f < flow)
    best = max(first.area(f) + second.area(flow - f) for f in cuts)
    return first.area(flow) + second.area(flow) - best


def least_pair_loss(tables: Sequence[Table], flow: float) -> float:
    """min over pairs of distinct nodes of pair_loss (identical tables are tried once)."""
    kinds: dict[Table, int] = {}
    for t in tables:
        kinds[t] = kinds.get(t, 0) + 1
    pairs = [(a, b) for a, b in itertools.combinations(kinds, 2)] + [(a, a) for a, n in kinds.items() if n > 1]
    return min((pair_loss(a, b, flow) for a, b in pairs), default=math.inf)


def refuted(tables: Sequence[Table], num_layers: int, flow: float) -> bool:
    """True when no placement can carry `flow` past a slow link: the slack cannot pay for a shared layer."""
    return slack(tables, num_layers, flow) < least_pair_loss(tables, flow)


def first_miss(tables: Sequence[Table], num_layers: int, low: float, high: float, steps: int) -> float | None:
    """Smallest flow in (low, high] on the scan that is refuted (a valid bound: any refuted flow is one)."""
    grid = [low + (high - low) * i / steps for i in range(1, steps + 1)]
    for i, flow in enumerate(grid):
        if refuted(tables, num_layers, flow):
            prev = grid[i - 1] if i else low
            fine = [prev + (flow - prev) * j / REFINE_STEPS for j in range(1, REFINE_STEPS)]
            return next((f for f in fine if refuted(tables, num_layers, f)), flow)
    return None


__all__ = [
    "NetworkBound",
    "Table",
    "crossing_bound",
    "first_miss",
    "least_pair_loss",
    "pair_loss",
    "refuted",
    "slack",
    "slow_link_threshold",
]
