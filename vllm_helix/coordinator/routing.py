"""Routes of the requests being served: the planner's router plus what serving adds to it.

KV admission is strict here: a route reserves the request's own worst case (prompt + max_tokens) on
every hop, against the KV capacity each node reported at start-up, so a node's paged KV cache cannot
overflow mid-request; requests that do not fit now wait in vLLM's queue. Each admitted route is logged.

Membership: a lost (or draining) node leaves routing at once and the router is re-weighted with the max flow
of the live nodes (`live_flow.py`); a node that comes back is restored the same way. The receiver thread
reports membership while the scheduler thread admits, hence the lock.

Speed: the plan's weights assume every node as fast as its profile. Each node's measured speed (its
throughput / planned over the drift window, coordinator/drift.py), relative to the median node, scales its
capacity in that max flow, so a node running slower than planned gets fewer new requests and a faster one
more (`--helix-static-weights` keeps the plan's). Relative, because a plan's numbers may be off for all nodes
alike (an estimate), which changes no proportion; re-weighed only when a speed moved by over SPEED_STEP, at
most once per SPEED_EVERY_S, so the noise of a shared host does not churn the weights. The nodes' start-up probes
weigh the routes before the first request if they move a speed by over PROBE_STEP.
"""

from __future__ import annotations

import logging
import statistics
import threading
from collections.abc import Iterable, Mapping
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
SPEED_STEP = 0.1  # a node's relative speed must move by more than this share to re-weigh
# ... and by more than this on the start-up probes alone: a probe is a second or two of work, which a shared host
# moves by 10-20 % from run to run; within the drift check's tolerance the plan stands until serving measures it
PROBE_STEP = 0.25
SPEED_EVERY_S = 10.0  # the drift window: a newer speed says nothing new before that
SPEED_RANGE = (0.05, 20.0)  # relative speeds are clamped to this: no node's weight goes to nothing


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
        self.follows_speed = not options.get("static_weights", False)
        self.speed: dict[str, float] = {}  # relative speeds the weights follow (none: the plan's)
        self._speed_at = float("-inf")
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
            self.speed.pop(node, None)  # measured afresh when it is back (metrics forget it too)
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

    def follow_speeds(self, measured: Mapping[str, float], now: float, step: float = SPEED_STEP) -> bool:
        """Weigh routes by the nodes' measured throughput / planned (`measured`, the nodes measured so far) if a
        relative speed moved by over `step`; True when the weights changed."""
        middle = statistics.median(measured.values()) if measured else 0.0
        if not self.follows_speed or middle <= 0:
            return False
        low, high = SPEED_RANGE
        speed = {n: min(high, max(low, ratio / middle)) for n, ratio in measured.items()}
        with self._lock:
            moved = any(abs(speed.get(n, 1.0) / self.speed.get(n, 1.0) - 1) > step
                        for n in speed.keys() | self.speed.keys())
            if not moved or now - self._speed_at < SPEED_EVERY_S:
                return False
            self.speed, self._speed_at = speed, now
            self._reweight()
        return True

    def _reweight(self) -> None:
        self.live_flow, arc_flow = live_max_flow(self.plan.flow, self.lost, self.speed)
        # all back, at planned speed: the plan's own weights again
        self.router.reweight(arc_flow if self.lost or self.speed else self.plan.flow.arc_flow)
        lost = f"; lost: {', '.join(sorted(self.lost))}" if self.lost else ""
        speed = "; relative speed: " + ", ".join(f"{n} {s:.2f}" for n, s in sorted(self.speed.items())) \
            if self.speed else ""
        logger.info("Helix live max flow %.1f tokens/s of the planned %.1f (%.0f%%)%s%s", self.live_flow,
                    self.planned_flow, 100 * self.live_flow / self.planned_flow if self.planned_flow else 0, lost,
                    speed)
        if self.metrics:
            self.metrics.set_routing(self.live_flow, self.speed)

    def routes_of(self, request_ids: Iterable[str]) -> list[list[str]]:
        """The routes (nodes in order) of those of `request_ids` that hold one."""
        with self._lock:
            return [self.routes[rid] for rid in request_ids if rid in self.routes]

    def routes_through(self, node: str) -> list[str]:
        with self._lock:
            return [rid for rid, nodes in self.routes.items() if node in nodes]
