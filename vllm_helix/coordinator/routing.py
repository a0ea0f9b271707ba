"""Routes of the requests being served: the planner's router plus what serving adds to it.

KV admission is strict here: a route reserves the request's own worst case (prompt + max_tokens) on
every hop, against the KV capacity each node reported at start-up, so a node's paged KV cache cannot
overflow mid-request; requests that do not fit now wait in vLLM's queue. Each admitted route is logged.

Membership: a lost (or draining) node leaves routing at once and the router is re-weighted with the max flow
of the live nodes (`live_flow.py`); a node that comes back is restored the same way. The receiver thread
reports membership while the scheduler thread admits, hence the lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from vllm_helix.planner.cluster import COORDINATOR
from vllm_helix.planner.kv_expectation import KVParams
from vllm_helix.planner.live_flow import live_max_flow
from vllm_helix.planner.plan import Plan
from vllm_helix.planner.router import ROUTERS, Route

if TYPE_CHECKING:
    from vllm_helix.coordinator.metrics import ClusterMetrics

logger = logging.getLogger("vllm_helix.routes")
STRICT_KV = KVParams(hwm=1.0, output_ratio=1.0)


def describe(route: Route) -> str:
    """'coordinator -> n0 [0, 3) -> n1 [3, 8) -> coordinator'."""
    hops = [f"{h.node} {h.layers}" if h.layers else h.node for h in route.hops]
    return " -> ".join([COORDINATOR, *hops])


class RouteBook:
    def __init__(self, plan: Plan, kv_tokens: dict[str, int], block_tokens: int, options: dict[str, Any]):
        self.plan = plan
        slots = {n: kv_tokens[n] * plan.placement.ranges[n].size for n in kv_tokens}  # token-layer slots
        kwargs = {"kv_params": STRICT_KV, "improved": True} if options["router"] == "maxflow" else {}
        self.router = ROUTERS[options["router"]].from_plan(plan, slots, **kwargs)
        self.block_tokens = block_tokens  # the largest KV block of any node
        self.routes: dict[str, list[str]] = {}
        self.lost: set[str] = set()
        self._log_path = options.get("route_log")
        self._lock = threading.Lock()
        self.planned_flow, _ = live_max_flow(plan.flow)
        self.live_flow = self.planned_flow
        self.metrics: ClusterMetrics | None = None  # set by the coordinator (coordinator/metrics.py)

    def admit(self, request_id: str, prompt_len: int, max_tokens: int) -> bool:
        """Reserve a route with KV room on every hop; False when none has room now."""
        # nodes allocate whole blocks: reserve the request's worst case rounded up to a block
        worst = -(-(prompt_len + max_tokens) // self.block_tokens) * self.block_tokens
        with self._lock:
            route = self.router.route(request_id, prompt_len, worst - prompt_len)
            if route is None:
                if self.metrics:
                    self.metrics.on_wait(request_id)
                return False
            if self.metrics:
                self.metrics.on_admit(request_id, route.nodes)
            self.routes[request_id] = route.nodes
        line = f"route {request_id}: {describe(route)}"
        logger.info(line)
        if self._log_path:
            with open(self._log_path, "a") as log:
                log.write(line + "\n")
        return True

    def never_fits(self) -> bool:
        """Nothing is reserved, yet a request found no room: it will never fit (in what is alive now)."""
        return not self.router.active

    def release(self, request_id: str) -> None:
        with self._lock:
            self.routes.pop(request_id, None)
            self.router.on_finish(request_id)

    def node_lost(self, node: str) -> list[str] | None:
        """Stop routing through `node`; the requests routed through it, or None if already known."""
        with self._lock:
            if node in self.lost:
                return None
            self.lost.add(node)
            self.router.on_node_lost(node)
            self._reweight()
            return [rid for rid, nodes in self.routes.items() if node in nodes]

    def node_back(self, node: str, kv_tokens: int) -> None:
        """Route through `node` again (it came back with a cache of `kv_tokens` tokens per layer)."""
        with self._lock:
            self.lost.discard(node)
            self.router.on_node_back(node)
            self.router.set_kv_capacity(node, kv_tokens * self.plan.placement.ranges[node].size)
            self._reweight()

    def _reweight(self) -> None:
        self.live_flow, arc_flow = live_max_flow(self.plan.flow, self.lost)
        # all back: the plan's own weights again
        self.router.reweight(arc_flow if self.lost else self.plan.flow.arc_flow)
        lost = f"; lost: {', '.join(sorted(self.lost))}" if self.lost else ""
        logger.info("Helix live max flow %.1f tokens/s of the planned %.1f (%.0f%%)%s", self.live_flow,
                    self.planned_flow, 100 * self.live_flow / self.planned_flow if self.planned_flow else 0, lost)

    def routes_of(self, request_ids: Iterable[str]) -> list[list[str]]:
        """The routes (nodes in order) of those of `request_ids` that hold one."""
        with self._lock:
            return [self.routes[rid] for rid in request_ids if rid in self.routes]

    def routes_through(self, node: str) -> list[str]:
        with self._lock:
            return [rid for rid, nodes in self.routes.items() if node in nodes]
