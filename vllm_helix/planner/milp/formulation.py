"""Solver-independent description of the placement MILP (interval formulation, helix-spec §4.1 and §9).

One boolean per node and layer interval: ``x[i, s, k] = 1`` iff node i holds layers [s, s + k). A node
may stay unused (all its x are 0). Flows are integers in units of ``1 / scale`` tokens/s (0.01 tok/s by
default): CP-SAT only takes integer coefficients, and capacities are rounded *down* so the model never
promises more than the evaluator finds. The numbers a plan reports come from `flow.max_flow`, never from
this scaled objective.

Tightenings over the reference formulation:

* capacity clipping — no node or arc carries more than ``flow_cap``, an upper bound on the max flow of
  any placement (the fixed point of F = sum_i max_k k*min(T_i(k), F) / L, below U = 2803.9 on single24);
* per-layer cuts — with exact chaining every token passes every layer exactly once, so the flows of the
  intervals covering layer l sum to F, and at every layer boundary the flow ending equals the flow starting;
* symmetry breaking — interchangeable nodes (same capacity table, same links, no pin) take their
  intervals in a fixed order;
* only links that can ever be layer-compatible become arcs; the reference's link pruning is an option.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import networkx as nx

from vllm_helix.errors import InfeasiblePlacement
from vllm_helix.planner.cluster import COORDINATOR, ClusterSpec
from vllm_helix.planner.milp.options import SolverOptions
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.planner.throughput import NodeCapacity


@dataclass(frozen=True, slots=True)
class Arc:
    src: str  # node name or COORDINATOR
    dst: str
    capacity: int  # scaled, clipped


@dataclass(frozen=True, slots=True)
class Formulation:
    num_layers: int
    nodes: tuple[str, ...]
    throughput: Mapping[str, tuple[int, ...]]  # scaled, clipped T_i(k), index k - 1; len = usable max k
    choices: Mapping[str, tuple[tuple[int, int], ...]]  # allowed (start, k) per node
    arcs: tuple[Arc, ...]
    symmetry_classes: tuple[tuple[str, ...], ...]  # each of size >= 2, in order
    flow_cap: float  # tokens/s upper bound on any placement's max flow (after clipping)
    options: SolverOptions
    min_layers: int = 1  # a used, unpinned node holds at least this many layers (pipeline depth bound)

    @property
    def scale(self) -> int:
        return self.options.scale

    @property
    def partial(self) -> bool:
        return self.options.partial_inference

    def num_variables(self) -> int:
        """Booleans + integers of the CP-SAT/Gurobi model (x and its flow, arc flow and switch, F)."""
        return 2 * sum(len(c) for c in self.choices.values()) + 2 * len(self.arcs) + 1


# ------------------------------------------------------------------------------------ building


def build_formulation(
    cluster: ClusterSpec, model: ModelSpec, capacities: Mapping[str, NodeCapacity], options: SolverOptions
) -> Formulation:
    """Sets, scaled capacities and arcs of the MILP; raises InfeasiblePlacement when nothing can fit."""
    _check_names(cluster, options)
    max_k = {n: _max_layers(cluster, model, n, capacities[n], options) for n in cluster.node_names
             if n not in options.excludes}
    max_k = {n: k for n, k in max_k.items() if k > 0}
    check_fits(model, max_k, options)
    min_k = _min_layers(options, max_k, model.num_layers)
    max_k = {n: k for n, k in max_k.items() if k >= min_k or n in options.pins}
    raw = {n: capacities[n].tokens_per_s[: max_k[n]] for n in max_k}
    flow_cap = flow_upper_bound(raw, model.num_layers, min_k) if options.clip_capacities else math.inf
    links = _links(cluster, model, options.prune)
    flow_cap = min(flow_cap, _coordinator_cap(links))
    throughput = {n: tuple(_scaled(min(t, flow_cap), options.scale) for t in ts) for n, ts in raw.items()}
    choices = {n: _choices(n, min_k, max_k[n], model.num_layers, options.pins) for n in max_k}
    arcs = _arcs(links, throughput, choices, model.num_layers, options, flow_cap)
    classes = _symmetry_classes(cluster, throughput, links, options) if options.symmetry_breaking else ()
    return Formulation(model.num_layers, tuple(max_k), throughput, choices, tuple(arcs), classes, flow_cap,
                       options, min_k)


def _check_names(cluster: ClusterSpec, options: SolverOptions) -> None:
    for name in list(options.pins) + list(options.excludes):
        if name not in cluster.node_names:
            raise InfeasiblePlacement(f"pin/exclude names unknown node {name!r}; the cluster has {cluster.node_names}")
    both = set(options.pins) & set(options.excludes)
    if both:
        raise InfeasiblePlacement(f"nodes {sorted(both)} are both pinned and excluded")


def _min_layers(options: SolverOptions, max_k: Mapping[str, int], num_layers: int) -> int:
    """Smallest layer count a used node may take (the depth bound); fails when no node reaches it."""
    min_k = min(options.min_layers_per_node or 1, num_layers)
    if min_k > 1 and sum(k for k in max_k.values() if k >= min_k) < num_layers:
        raise InfeasiblePlacement(
            f"min_layers_per_node {min_k}: the nodes that hold {min_k}+ layers cannot hold all {num_layers} "
            f"layers together; allow shallower stages (a lower minimum / a deeper pipeline)")
    return min_k


def _max_layers(cluster: ClusterSpec, model: ModelSpec, name: str, cap: NodeCapacity,
                options: SolverOptions) -> int:
    """Layers whose weights plus the KV reserve fit the node's VRAM, within the profile and the user cap."""
    vram = vram_max_layers(cluster.node(name).vram_bytes, model.layer_bytes, options.kv_reserve_fraction)
    k = min(cap.max_layers, vram)
    return k if options.max_layers_per_node is None else min(k, options.max_layers_per_node)


def vram_max_layers(vram_bytes: float, layer_bytes: float, kv_reserve_fraction: float) -> int:
    """Layers whose weights fit the VRAM left after the KV reserve."""
    if not layer_bytes:
        return 10**9
    return int((1 - kv_reserve_fraction) * vram_bytes // layer_bytes)


def check_fits(model: ModelSpec, max_k: Mapping[str, int], options: SolverOptions) -> None:
    """Fail fast, saying how much memory is missing, when the usable nodes cannot hold every layer."""
    total = sum(max_k.values())
    if total < model.num_layers:
        missing = (model.num_layers - total) * model.layer_bytes / (1 - options.kv_reserve_fraction)
        raise InfeasiblePlacement(
            f"the model does not fit: usable nodes hold {total} of {model.num_layers} layers; about "
            f"{missing / 1e9:.1f} GB more VRAM is needed (weights plus a {options.kv_reserve_fraction:.0%} KV "
            f"reserve), or lower the KV reserve / drop excludes and layer caps"
        )
    for name, (start, end) in options.pins.items():
        if not 0 <= start < end <= model.num_layers:
            raise InfeasiblePlacement(
                f"pin {name}: layers [{start}, {end}) outside the model's [0, {model.num_layers})")
        if end - start > max_k.get(name, 0):
            raise InfeasiblePlacement(
                f"pin {name}: {end - start} layers do not fit; the node holds at most {max_k.get(name, 0)}")


def flow_upper_bound(throughput: Mapping[str, Sequence[float]], num_layers: int, min_k: int = 1) -> float:
    """Fixed point of F = sum_i max_k k*min(T_i(k), F) / L, a valid bound on every placement's max flow.

    Every token passes L layers, and node i passes at most min(T_i(k), F) tokens through its k layers,
    so L*F <= sum_i k_i*min(T_i(k_i), F). Iterating from U = sum_i max_k k*T_i(k) / L decreases to it.
    Only k >= min_k count (the depth bound); a node may also stay unused (0).
    """
    def phi(cap: float) -> float:
        return sum(max((k * min(t, cap) for k, t in enumerate(ts, 1) if k >= min_k), default=0.0)
                   for ts in throughput.values()) / num_layers

    bound = phi(math.inf)
    for _ in range(200):
        nxt = phi(bound)
        if nxt >= bound - 1e-9:
            break
        bound = nxt
    return bound


def _scaled(tokens_per_s: float, scale: int) -> int:
    return max(0, math.floor(tokens_per_s * scale + 1e-9))


def _choices(name: str, min_k: int, max_k: int, num_layers: int, pins: Mapping[str, tuple[int, int]]):
    if name in pins:
        start, end = pins[name]
        return ((start, end - start),)
    return tuple((s, k) for k in range(min_k, min(max_k, num_layers) + 1) for s in range(num_layers - k + 1))


# ------------------------------------------------------------------------------------ links and arcs


def _links(cluster: ClusterSpec, model: ModelSpec,
           prune: tuple[int, int, float] | None) -> dict[tuple[str, str], float]:
    """Tokens/s each physical link carries, as the evaluator's split graph counts bytes per token."""
    kept = prune_links(cluster, *prune) if prune else None
    hop = model.token_bytes + model.activation_bytes_per_token
    links = {}
    for lk in cluster.links:
        if kept is not None and frozenset((lk.src, lk.dst)) not in kept:
            continue
        size = model.token_bytes if COORDINATOR in (lk.src, lk.dst) else hop
        links[(lk.src, lk.dst)] = lk.bandwidth_bytes_per_s / size
    return links


def link_capacities(cluster: ClusterSpec, model: ModelSpec) -> dict[tuple[str, str], float]:
    """Tokens/s of every physical link (no pruning), as the evaluator's split graph counts them."""
    return _links(cluster, model, None)


def prune_links(cluster: ClusterSpec, min_keep: int, max_keep: int, threshold: float) -> set[frozenset[str]]:
    """The reference's `prune_cluster` (helix-spec §4.2): per endpoint, keep its fastest `min_keep` links and,
    up to `max_keep`, those faster than `threshold` bytes/s (strictly for the source, as the reference);
    the kept set is the union over endpoints. Returns unordered node pairs."""
    kept: set[frozenset[str]] = set()
    for end in [COORDINATOR, *cluster.node_names]:
        incident = sorted(
            ((lk.bandwidth_bytes_per_s, lk.dst) for lk in cluster.links if lk.src == end),
            reverse=True,
        )
        for pos, (bw, other) in enumerate(incident[:max_keep]):
            strict = end == COORDINATOR
            if pos < min_keep or (bw > threshold if strict else bw >= threshold):
                kept.add(frozenset((end, other)))
    return kept


def _coordinator_cap(links: Mapping[tuple[str, str], float]) -> float:
    into = sum(c for (s, _), c in links.items() if s == COORDINATOR)
    out = sum(c for (_, d), c in links.items() if d == COORDINATOR)
    return min(into, out)


def _arcs(links, throughput, choices, num_layers, options, flow_cap) -> list[Arc]:
    starts = {n: {s for s, _ in c} for n, c in choices.items()}
    ends = {n: {s + k for s, k in c} for n, c in choices.items()}
    arcs = []
    for (src, dst), cap in links.items():
        if src not in choices and src != COORDINATOR or dst not in choices and dst != COORDINATOR:
            continue
        if src == dst or not _can_chain(src, dst, starts, ends, choices, num_layers, options.partial_inference):
            continue
        clip = min(cap, flow_cap)
        scaled = _scaled(clip, options.scale)
        for end in (src, dst):
            if end != COORDINATOR:
                scaled = min(scaled, max(throughput[end]))
        if scaled > 0:
            arcs.append(Arc(src, dst, scaled))
    return arcs


def _can_chain(src, dst, starts, ends, choices, num_layers, partial) -> bool:
    if src == COORDINATOR:
        return 0 in starts[dst]
    if dst == COORDINATOR:
        return num_layers in ends[src]
    if not partial:
        return bool(ends[src] & starts[dst])
    return any(s <= e < s + k for e in ends[src] for s, k in choices[dst])


def _symmetry_classes(cluster, throughput, links, options) -> tuple[tuple[str, ...], ...]:
    """Groups of interchangeable nodes: same capacities, same links to everyone else, not pinned."""
    classes: list[list[str]] = []
    for name in throughput:
        if name in options.pins:
            continue
        for group in classes:
            if _interchangeable(group[0], name, throughput, links, cluster):
                group.append(name)
                break
        else:
            classes.append([name])
    return tuple(tuple(g) for g in classes if len(g) > 1)


def _interchangeable(a: str, b: str, throughput, links, cluster) -> bool:
    if throughput[a] != throughput[b] or links.get((a, b)) != links.get((b, a)):
        return False
    for other in [COORDINATOR, *cluster.node_names]:
        if other in (a, b):
            continue
        if links.get((a, other)) != links.get((b, other)) or links.get((other, a)) != links.get((other, b)):
            return False
    return True


# ------------------------------------------------------------------------------------ solutions


def placement_of(assignment: Mapping[str, tuple[int, int] | None]) -> Placement:
    """Placement from node -> (start, k) (None = unused), in the formulation's node order."""
    return Placement({n: LayerRange(s, s + k) for n, sk in assignment.items() if sk for s, k in [sk]})


def integer_flow(form: Formulation, placement: Placement) -> tuple[int, dict[tuple[str, str], int]]:
    """Max flow of `placement` in the formulation's own scaled integer capacities (warm-start hints)."""
    from vllm_helix.planner.placement import arc_allowed

    g = nx.DiGraph()
    for name, rng in placement.ranges.items():
        if name in form.throughput and rng.size <= len(form.throughput[name]):
            g.add_edge((name, "in"), (name, "out"), capacity=form.throughput[name][rng.size - 1])
    for arc in form.arcs:
        src_rng = None if arc.src == COORDINATOR else placement[arc.src]
        dst_rng = None if arc.dst == COORDINATOR else placement[arc.dst]
        if (arc.src != COORDINATOR and src_rng is None) or (arc.dst != COORDINATOR and dst_rng is None):
            continue
        if arc_allowed(src_rng, dst_rng, form.num_layers, form.partial):
            u = "source" if arc.src == COORDINATOR else (arc.src, "out")
            v = "sink" if arc.dst == COORDINATOR else (arc.dst, "in")
            g.add_edge(u, v, capacity=arc.capacity)
    if "source" not in g or "sink" not in g:
        return 0, {}
    value, flows = nx.maximum_flow(g, "source", "sink")
    arc_flow = {}
    for arc in form.arcs:
        u = "source" if arc.src == COORDINATOR else (arc.src, "out")
        v = "sink" if arc.dst == COORDINATOR else (arc.dst, "in")
        if u in flows and v in flows[u]:
            arc_flow[(arc.src, arc.dst)] = int(flows[u][v])
    return int(value), arc_flow


def allowed_assignment(form: Formulation, placement: Placement) -> dict[str, tuple[int, int] | None]:
    """node -> (start, k) for the nodes of `placement` the formulation allows; others unused."""
    out: dict[str, tuple[int, int] | None] = {}
    for name in form.nodes:
        rng = placement[name]
        sk = (rng.start, rng.size) if rng is not None else None
        out[name] = sk if sk in set(form.choices[name]) else None
    return out


def describe(form: Formulation) -> str:
    nx_ = sum(len(c) for c in form.choices.values())
    return (f"{len(form.nodes)} nodes, {form.num_layers} layers, {nx_} interval choices, {len(form.arcs)} arcs, "
            f"{len(form.symmetry_classes)} symmetry classes, flow cap {form.flow_cap:.1f} tok/s")

