"""Max-flow evaluation of a placement (helix-spec §3): the cluster's serving-throughput bound.

One unit of flow is one token per second traversing the whole model (prompt and decode tokens alike).
Two graphs, same connectivity rule (`placement.arc_allowed`):

* ``"split"`` (default, the reference simulator's graph, §3.3): every node is four vertices
  in -> start -> end -> out, so its inbound NIC, its compute (T_i(k_i)) and its outbound NIC are separate
  capacities; the coordinator's NICs cap the source and the sink. A link u->v carries bw/(token + activation)
  tokens/s between nodes and bw/token on coordinator hops.
* ``"planner"`` (the reference MILP's graph, §3.2): one capacity per node, T_i(k) already capped by its NIC;
  links carry bw/activation between nodes and bw/token on coordinator hops.

A max flow is rarely unique, and its per-arc flows become the router's weights, so we choose one on
purpose: the min-cost max flow whose cost is each link's latency plus its per-token transfer time (in µs,
plus 1 per hop), so among equal max flows the flow takes short, fast routes. It runs networkx's network
simplex on capacities scaled to integers (`scale` units per token/s, 1e6 by default), whose result depends
only on the insertion order of the graph (cluster and placement order), never on Python's hash order: the
same placement always writes the same plan. Nodes are kept below BUSY_SHARE of their compute where the flow
allows ("spread" routing) or not ("direct"; see ROUTINGS). ``scale=None`` runs the reference's preflow-push on
raw floats instead (its bit-compatible routing weights, e.g. for the S1 reproduction).

Example:
    >>> from vllm_helix.planner.examples import reference_example
    >>> ex = reference_example("ilp")
    >>> round(max_flow(ex.cluster, ex.model, ex.placement).value, 3)
    1289.556
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
from networkx.algorithms.flow import preflow_push
from networkx.algorithms.flow.mincost import max_flow_min_cost

from vllm_helix.errors import InfeasiblePlacement
from vllm_helix.planner.cluster import COORDINATOR, ClusterSpec
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import Placement, arc_allowed
from vllm_helix.planner.throughput import NodeCapacity, ThroughputSource, capacity_table, upper_bound

SOURCE, SINK = "source", "sink"
GRAPHS = ("split", "planner")
Arc = tuple[str, str]  # (src, dst) of a physical link; COORDINATOR at either end
Edge = tuple[tuple[str, str], tuple[str, str]]  # an edge of the flow graph between (name, role) vertices

BUSY_SHARE = 0.8  # a node's compute beyond this share of its capacity ...
BUSY_COST = 10_000  # ... costs as much as 10 ms of route latency per unit of flow
# The two ways of choosing among a placement's max flows that `vllm-helix plan` tries (the simulator judges):
# "spread" keeps every node below BUSY_SHARE where the flow allows (a saturated node queues; this raised the
# reference layouts' simulated decode throughput), "direct" takes the shortest, fastest routes whatever the
# nodes' load, leaving spare replicas idle (fewer, fuller batches; on single24's KV-balanced plan +4.5 %).
ROUTINGS = {"spread": BUSY_SHARE, "direct": 1.0}


@dataclass(frozen=True, slots=True)
class FlowResult:
    value: float  # max flow, tokens/s
    upper_bound: float  # U = sum_i max_k k*T_i(k) / L ("max compute throughput")
    node_flow: dict[str, float]  # tokens/s through each used node's layers
    node_capacity: dict[str, float]  # T_i(k_i) of each used node
    arc_flow: dict[Arc, float]  # tokens/s on each layer-compatible link (router weights)
    arc_capacity: dict[Arc, float]  # tokens/s each such link can carry
    min_cut: tuple[str, ...]  # the saturated capacities that bound the flow, human-readable
    graph: str
    routing: str = "spread"  # how this max flow was chosen among equal ones (ROUTINGS)

    @property
    def used_arcs(self) -> list[Arc]:
        return [a for a, f in self.arc_flow.items() if f > 0]


def compatible_arcs(
    cluster: ClusterSpec, placement: Placement, num_layers: int, partial: bool = False,
    link_order: Sequence[Arc] | None = None,
) -> list[Arc]:
    """Physical links that may carry requests under this placement, in cluster (or given) order."""
    candidates = link_order if link_order is not None else [(lk.src, lk.dst) for lk in cluster.links]
    arcs = []
    for src, dst in candidates:
        if cluster.link(src, dst) is None:
            continue
        if (src != COORDINATOR and placement[src] is None) or (dst != COORDINATOR and placement[dst] is None):
            continue
        src_range = None if src == COORDINATOR else placement[src]
        dst_range = None if dst == COORDINATOR else placement[dst]
        if arc_allowed(src_range, dst_range, num_layers, partial):
            arcs.append((src, dst))
    return arcs


def max_flow(
    cluster: ClusterSpec,
    model: ModelSpec,
    placement: Placement,
    *,
    throughput: str | ThroughputSource = "reference",
    capacities: Mapping[str, NodeCapacity] | None = None,
    graph: str = "split",
    partial_inference: bool = False,
    link_order: Sequence[Arc] | None = None,
    scale: float | None = 1e6,
    routing: str = "spread",
) -> FlowResult:
    """Max flow (tokens/s) of `placement` on `cluster`, with per-arc flows and the min cut.

    `routing` (a ROUTINGS name) chooses among the max flows, whose arc flows are the router's weights.
    Raises InfeasiblePlacement if the placement names unknown nodes or holds more layers than fit.
    """
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {tuple(ROUTINGS)}, got {routing!r}")
    capacities = capacities if capacities is not None else capacity_table(cluster, model, throughput)
    placement.validate(cluster.node_names, model.num_layers, {n: c.max_layers for n, c in capacities.items()})
    arcs = compatible_arcs(cluster, placement, model.num_layers, partial_inference, link_order)
    builder = _split_graph if graph == "split" else _planner_graph
    g, arc_edges, node_edges = builder(cluster, model, placement, capacities, arcs, ROUTINGS[routing])
    result = _solve(g, arc_edges, node_edges, scale, upper_bound(capacities, model.num_layers), graph)
    return dataclasses.replace(result, routing=routing)


# ------------------------------------------------------------------------------------ graphs
# Each builder returns (graph with float 'capacity' and integer 'weight' (cost), physical arc -> graph edge,
# node -> its compute edges).


def _split_graph(cluster, model, placement, capacities, arcs, busy_share):
    token, hop = model.token_bytes, model.token_bytes + model.activation_bytes_per_token
    g = nx.DiGraph()
    g.add_edge(SOURCE, (COORDINATOR, "out"), capacity=cluster.coordinator.nic_out_bytes_per_s / token)
    g.add_edge((COORDINATOR, "in"), SINK, capacity=cluster.coordinator.nic_in_bytes_per_s / token)
    inbound = {name: {s for s, d in arcs if d == name} for name in placement.ranges}
    outbound = {name: {d for s, d in arcs if s == name} for name in placement.ranges}
    node_edges = {}
    for name, rng in placement.ranges.items():
        node = cluster.node(name)
        size_in = token if inbound[name] == {COORDINATOR} else hop
        size_out = token if outbound[name] == {COORDINATOR} else hop
        g.add_edge((name, "in"), (name, "start"), capacity=node.nic_in_bytes_per_s / size_in)
        node_edges[name] = _add_compute(g, name, "start", "end", capacities[name].throughput(rng.size), busy_share)
        g.add_edge((name, "end"), (name, "out"), capacity=node.nic_out_bytes_per_s / size_out)
    arc_edges = {}
    for src, dst in arcs:
        size = token if COORDINATOR in (src, dst) else hop
        edge = ((src, "out"), (dst, "in"))
        link = cluster.link(src, dst)
        g.add_edge(*edge, capacity=link.bandwidth_bytes_per_s / size, weight=_hop_cost(link, size))
        arc_edges[(src, dst)] = edge
    return g, arc_edges, node_edges


def _planner_graph(cluster, model, placement, capacities, arcs, busy_share):
    g = nx.DiGraph()
    node_edges = {}
    for name, rng in placement.ranges.items():
        node_edges[name] = _add_compute(g, name, "in", "out", capacities[name].throughput(rng.size), busy_share)
    arc_edges = {}
    for src, dst in arcs:
        bandwidth = cluster.link(src, dst).bandwidth_bytes_per_s
        edge: tuple[Any, Any]
        if src == COORDINATOR:
            edge = (SOURCE, (dst, "in"))
        elif dst == COORDINATOR:
            edge = ((src, "out"), SINK)
        else:
            edge = ((src, "out"), (dst, "in"))
        size = model.token_bytes if COORDINATOR in (src, dst) else model.activation_bytes_per_token
        g.add_edge(*edge, capacity=bandwidth / size, weight=_hop_cost(cluster.link(src, dst), size))
        arc_edges[(src, dst)] = edge
    return g, arc_edges, node_edges


def _add_compute(g: nx.DiGraph, name: str, a: str, b: str, capacity: float, busy_share: float) -> tuple[Edge, ...]:
    """A node's compute capacity as two parallel edges: the first `busy_share` free, the rest at BUSY_COST, so
    among equal max flows the flow spreads over nodes before it saturates any. Returns the edges out of `a`
    that carry the node's flow."""
    g.add_edge((name, a), (name, b), capacity=capacity * busy_share, weight=0)
    g.add_edge((name, a), (name, "busy"), capacity=capacity * (1 - busy_share), weight=BUSY_COST)
    g.add_edge((name, "busy"), (name, b), capacity=capacity * (1 - busy_share), weight=0)
    return ((name, a), (name, b)), ((name, a), (name, "busy"))


def _hop_cost(link, token_size: float) -> int:
    """A hop's cost per unit of flow: its latency plus one token's transfer time, in µs, plus 1 per hop."""
    return round(1e6 * (link.latency_s + token_size / link.bandwidth_bytes_per_s)) + 1


# ------------------------------------------------------------------------------------ solving


def _solve(g: nx.DiGraph, arc_edges, node_edges, scale, bound: float, graph: str) -> FlowResult:
    empty = FlowResult(0.0, bound, {n: 0.0 for n in node_edges}, {}, {}, {}, ("no path from the coordinator "
                       "through all layers back to it",), graph)
    if SOURCE not in g or SINK not in g or not nx.has_path(g, SOURCE, SINK):
        return _with_arcs(empty, g, arc_edges, node_edges)
    unit = scale or 1.0
    if scale is None:  # the reference's algorithm on raw floats
        residual = preflow_push(g, SOURCE, SINK)
        value = residual.graph["flow_value"]
        flows = {u: {v: max(0.0, d["flow"]) for v, d in nbrs.items()} for u, nbrs in residual.adj.items()}
    else:
        for _, _, data in g.edges(data=True):
            data["capacity"] = round(data["capacity"] * scale)
        flows = max_flow_min_cost(g, SOURCE, SINK)
        value = sum(flows[SOURCE].values())

    def flow(edge) -> float:
        return flows[edge[0]][edge[1]] / unit

    def capacity(edge) -> float:
        return g.edges[edge]["capacity"] / unit

    return FlowResult(
        value=value / unit,
        upper_bound=bound,
        node_flow={n: sum(map(flow, edges)) for n, edges in node_edges.items()},
        node_capacity={n: sum(map(capacity, edges)) for n, edges in node_edges.items()},
        arc_flow={a: flow(e) for a, e in arc_edges.items()},
        arc_capacity={a: capacity(e) for a, e in arc_edges.items()},
        min_cut=_min_cut(g, flows, arc_edges, node_edges),
        graph=graph,
    )


def _with_arcs(result: FlowResult, g, arc_edges, node_edges) -> FlowResult:
    caps = {a: g.edges[e]["capacity"] for a, e in arc_edges.items()}
    return FlowResult(result.value, result.upper_bound, result.node_flow,
                      {n: sum(g.edges[e]["capacity"] for e in edges) for n, edges in node_edges.items()},
                      dict.fromkeys(arc_edges, 0.0), caps, result.min_cut, result.graph)


def _min_cut(g: nx.DiGraph, flows, arc_edges, node_edges) -> tuple[str, ...]:
    """Saturated edges from the source side to the sink side of the residual graph."""
    reachable, stack = {SOURCE}, [SOURCE]
    while stack:
        u = stack.pop()
        forward = [v for v, d in g.succ[u].items() if flows[u][v] < d["capacity"]]
        backward = [v for v in g.pred[u] if flows[v][u] > 0]
        for v in forward + backward:
            if v not in reachable:
                reachable.add(v)
                stack.append(v)
    names = {e: f"link {a[0]} -> {a[1]}" for a, e in arc_edges.items()}
    for n, (main, busy) in node_edges.items():
        names.update(dict.fromkeys((main, busy, (busy[1], main[1])), f"compute of {n}"))
    cut = set()
    for u, v in g.edges:
        if u in reachable and v not in reachable:
            cut.add(names.get((u, v)) or _nic_name(u, v))
    return tuple(sorted(cut))


def _nic_name(u, v) -> str:
    if u == SOURCE:
        return "coordinator outbound NIC"
    if v == SINK:
        return "coordinator inbound NIC"
    return f"inbound NIC of {u[0]}" if u[1] == "in" else f"outbound NIC of {u[0]}"


def why_no_flow(placement: Placement, num_layers: int, partial_inference: bool) -> str:
    """Why a placement serves nothing: layers no node holds, overlaps that need partial inference, or links."""
    covered = set()
    for rng in placement.ranges.values():
        covered.update(range(rng.start, rng.end))
    missing = [layer for layer in range(num_layers) if layer not in covered]
    if missing:
        return f"layers {_spans(missing)} of the model's {num_layers} are on no node"
    if not partial_inference:
        ends = {rng.end for rng in placement.ranges.values()} | {0}
        overlapping = sorted(n for n, rng in placement.ranges.items() if rng.start not in ends)
        if overlapping:
            return (f"the layer ranges overlap (no range ends where {', '.join(overlapping[:4])} starts), so routes "
                    f"need partial inference: pass --partial-inference")
    return "no chain of links from the coordinator through every layer and back (see the cluster's links)"


def _spans(layers: list[int]) -> str:
    spans, start = [], layers[0]
    for prev, cur in zip(layers, [*layers[1:], -1], strict=True):  # -1 closes the last span
        if cur != prev + 1:
            spans.append(f"[{start}, {prev + 1})")
            start = cur
    return ", ".join(spans)


def require_flow(result: FlowResult) -> FlowResult:
    """Raise InfeasiblePlacement when a placement serves nothing."""
    if result.value <= 0:
        raise InfeasiblePlacement("the placement has no route from the coordinator through every layer and back")
    return result
