"""The max flow of a plan restricted to the nodes that are alive now, at the speed they really run: the router's
weights after a node loss, or once a node is measured faster or slower than its plan.

Serving cannot wait for the placement solver when a node drops out, and need not: the placement stays, only
some nodes are gone. The plan's flow result already holds every node's compute capacity and every arc's
capacity, so the live cluster's flow network is that graph without the lost nodes (each node split in two
by its compute capacity), solved with networkx's min-cost max flow. Costs as in the planner's graph: one unit
per hop (short routes first), and with the plan's "spread" routing a node's compute beyond BUSY_SHARE of its
capacity costs BUSY_COST, so the flow spreads over the nodes left before it saturates any. Milliseconds for a
plan of dozens of nodes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import networkx as nx
from networkx.algorithms.flow.mincost import max_flow_min_cost

from vllm_helix.planner.cluster import COORDINATOR
from vllm_helix.planner.flow import BUSY_COST, ROUTINGS, FlowResult

Arc = tuple[str, str]
_SCALE = 1000  # integer capacities for network simplex: units of 1/1000 token/s


def live_max_flow(flow: FlowResult, lost: Collection[str] = (),
                  speed: Mapping[str, float] | None = None) -> tuple[float, dict[Arc, float]]:
    """(max flow in tokens/s, flow of each arc) of the plan's flow graph without the `lost` nodes, each node's
    compute capacity scaled by its `speed` (measured / planned; 1 where not given)."""
    g = nx.DiGraph()
    busy_share = ROUTINGS[flow.routing]  # the plan's own way of choosing among max flows
    for node, planned in flow.node_capacity.items():
        if node not in lost:
            capacity = planned * (speed or {}).get(node, 1.0)
            free = round(capacity * busy_share * _SCALE)
            g.add_edge((node, "in"), (node, "out"), capacity=free, weight=0)
            g.add_edge((node, "in"), (node, "busy"), capacity=round(capacity * _SCALE) - free, weight=BUSY_COST)
            g.add_edge((node, "busy"), (node, "out"), capacity=round(capacity * _SCALE) - free, weight=0)
    edges: dict[Arc, tuple] = {}
    for (src, dst), capacity in flow.arc_capacity.items():
        if src in lost or dst in lost:
            continue
        edge = ((src, "src") if src == COORDINATOR else (src, "out"),
                (dst, "sink") if dst == COORDINATOR else (dst, "in"))
        g.add_edge(*edge, capacity=round(capacity * _SCALE), weight=1)
        edges[(src, dst)] = edge
    source, sink = (COORDINATOR, "src"), (COORDINATOR, "sink")
    if source not in g or sink not in g or not nx.has_path(g, source, sink):
        return 0.0, {}
    flows = max_flow_min_cost(g, source, sink)
    arc_flow = {arc: flows[u][v] / _SCALE for arc, (u, v) in edges.items()}
    return sum(flows[source].values()) / _SCALE, arc_flow
