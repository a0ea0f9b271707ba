"""Request routers shared by the simulator and the serving path (helix-spec §5).

A router picks, for each new request, the chain of compute nodes (and the layers each runs) from the
coordinator through every layer and back. It knows nothing about clocks or simulator events: callers
tell it what they observe.

Serving-path API (keep it this small):

    router = MaxFlowRouter.from_plan(plan)            # or MaxFlowRouter(cluster, model, placement, flow, kv)
    route = router.route(request_id, prompt_len)      # Route, or None = no room now (try again later)
    for hop in route.hops: hop.node, hop.layers       # last hop is the coordinator (layers None)
    router.on_decode_step(request_id)                 # once per generated token (decode iteration)
    router.on_finish(request_id)                      # request done or aborted: frees its KV reservation
    router.on_node_lost(node) -> [request ids]        # stop routing to node; returns routes that used it
    router.on_node_back(node)                         # route through it again
    router.set_kv_capacity(node, slots)               # its KV token-layer slots (a node restarted)
    router.reweight(arc_flow)                         # new arc weights: the live cluster's max flow

`MaxFlowRouter` is Helix's scheduler: per node an interleaved weighted round-robin (IWRR) over the
outbound arcs weighted by the max-flow arc flows, arcs below 5 % of the node's outbound flow dropped,
prompt-length limits and KV-expectation admission. `improved=True` keeps the same weights but
(1) loads track the work of requests still in flight instead of growing forever, (2) KV admission uses
the request's own expected length, (3) hop bandwidth is the link's (NIC-shared), not its flow share.
Baselines: `RandomRouter`, `ShortestQueueRouter`, `SwarmRouter` (route chosen hop by hop at admission).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass
from typing import Any, Protocol

from vllm_helix.errors import InfeasiblePlacement
from vllm_helix.planner.cluster import COORDINATOR, ClusterSpec
from vllm_helix.planner.flow import FlowResult
from vllm_helix.planner.iwrr import IWRR
from vllm_helix.planner.kv_expectation import OFFLINE_KV, KVExpectation, KVParams
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.planner.profiles import has_profiles, profile_for

FLOW_FLOOR = 0.05  # arcs carrying < 5 % of a node's outbound flow are never chosen
MAX_PROMPT_TOKENS_PER_REQUEST = 2048  # reference: prompt_max_tokens = prompt_max_requests * 2048


@dataclass(frozen=True, slots=True)
class Hop:
    """Send to `node` (COORDINATOR for the way back) and run `layers` there; `bandwidth_bytes_per_s` is
    the rate the reference reserves on the link into `node` (the simulator uses it)."""

    node: str
    layers: LayerRange | None
    bandwidth_bytes_per_s: float


@dataclass(frozen=True, slots=True)
class Route:
    request_id: object
    hops: tuple[Hop, ...]

    @property
    def nodes(self) -> list[str]:
        return [h.node for h in self.hops[:-1]]


@dataclass(slots=True)
class _Active:
    route: Route
    indices: list[tuple[str, int]]  # (sender, outbound arc index) per hop
    kv_length: int
    work: float


class _Topology:
    """Outbound arcs per sender in link order, with flows, capacities and hop bandwidths."""

    def __init__(self, cluster: ClusterSpec, placement: Placement, flow: FlowResult):
        self.cluster, self.placement = cluster, placement
        self.out: dict[str, list[str]] = {}
        self.into: dict[str, list[str]] = {}
        for src, dst in flow.arc_flow:
            self.out.setdefault(src, []).append(dst)
            self.into.setdefault(dst, []).append(src)
        self.flow = flow.arc_flow
        self.used_speed = {a: cluster.link(*a).bandwidth_bytes_per_s * f / flow.arc_capacity[a]
                           for a, f in flow.arc_flow.items()}

    def nic_out(self, node: str) -> float:
        return self.cluster.coordinator.nic_out_bytes_per_s if node == COORDINATOR \
            else self.cluster.node(node).nic_out_bytes_per_s

    def nic_in(self, node: str) -> float:
        return self.cluster.coordinator.nic_in_bytes_per_s if node == COORDINATOR \
            else self.cluster.node(node).nic_in_bytes_per_s

    def flow_share_bandwidth(self, src: str, dst: str) -> float:
        """Reference: min(link, out-NIC x flow share, in-NIC x flow share), shares by used bandwidth."""
        used = self.used_speed[(src, dst)]
        out_total = sum(self.used_speed[(src, d)] for d in self.out[src])
        in_total = sum(self.used_speed[(s, dst)] for s in self.into[dst])
        link = self.cluster.link(src, dst).bandwidth_bytes_per_s
        return min(link, self.nic_out(src) * used / out_total if out_total else link,
                   self.nic_in(dst) * used / in_total if in_total else link)

    def nic_share_bandwidth(self, src: str, dst: str) -> float:
        """Improved: the whole link, capped by an even split of each NIC among the arcs that carry flow."""
        n_out = max(1, sum(1 for d in self.out[src] if self.flow[(src, d)] > 0))
        n_in = max(1, sum(1 for s in self.into[dst] if self.flow[(s, dst)] > 0))
        return min(self.cluster.link(src, dst).bandwidth_bytes_per_s, self.nic_out(src) / n_out,
                   self.nic_in(dst) / n_in)

    def layers_after(self, src: str, dst: str) -> LayerRange | None:
        if dst == COORDINATOR:
            return None
        rng = self.placement[dst]
        start = rng.start if src == COORDINATOR else max(rng.start, self.placement[src].end)
        return LayerRange(start, rng.end)


def default_kv_capacity(cluster: ClusterSpec, model: ModelSpec, placement: Placement) -> dict[str, int]:
    """KV token-layer slots of each used node from its GPU profile (reference `kv_cache_capacity`)."""
    gpu_types = {cluster.node(n).gpu_type for n in placement.ranges}
    if not has_profiles(model, gpu_types):
        raise InfeasiblePlacement(f"model {model.name!r} has no GPU profiles; pass kv capacities explicitly")
    out = {}
    for name, rng in placement.ranges.items():
        out[name] = profile_for(model, cluster.node(name).gpu_type).kv_slots(rng.size)
    return out


def prompt_limits(cluster: ClusterSpec, model: ModelSpec, placement: Placement) -> dict[str, int]:
    """Longest prompt each node accepts (prompt_max_requests(k) x 2048 tokens)."""
    if not has_profiles(model, {cluster.node(n).gpu_type for n in placement.ranges}):
        return {n: 1 << 30 for n in placement.ranges}
    return {n: profile_for(model, cluster.node(n).gpu_type).prompt_max_requests[r.size]
            * MAX_PROMPT_TOKENS_PER_REQUEST for n, r in placement.ranges.items()}


class Router(Protocol):
    """What the simulator and the serving path need from a router (the API in the module docstring)."""

    @property
    def name(self) -> str: ...

    @property
    def active(self) -> Sized:
        """Requests holding a route (and its KV reservation)."""
        ...

    @classmethod
    def from_plan(cls, plan: Any, kv_capacity: Mapping[str, int] | None = None, **kwargs: Any) -> Router: ...

    def route(self, request_id: object, prompt_len: int, expected_output: int | None = None) -> Route | None: ...

    def on_decode_step(self, request_id: object, tokens: int = 1) -> None: ...

    def on_finish(self, request_id: object) -> None: ...

    def on_node_lost(self, node: str) -> list[object]: ...

    def on_node_back(self, node: str) -> None: ...

    def set_kv_capacity(self, node: str, slots: int) -> None: ...

    def reweight(self, arc_flow: Mapping[tuple[str, str], float]) -> None: ...

    def bottleneck_usage(self) -> float: ...


class MaxFlowRouter:
    """Helix MaxFlow scheduling (IWRR over max-flow arc flows + KV expectation)."""

    name = "maxflow"

    def __init__(self, cluster: ClusterSpec, model: ModelSpec, placement: Placement, flow: FlowResult,
                 kv_capacity: Mapping[str, int] | None = None, *, kv_params: KVParams = OFFLINE_KV,
                 improved: bool = False, rng: random.Random | None = None):
        self.topo = _Topology(cluster, placement, flow)
        self.improved = improved
        self.kv = KVExpectation(placement.ranges, kv_capacity or default_kv_capacity(cluster, model, placement),
                                model.num_layers, kv_params)
        self.max_prompt = prompt_limits(cluster, model, placement)
        self.weights = dict(flow.arc_flow)  # arc -> weight: the plan's arc flows, or the live cluster's
        self.iwrr = {u: IWRR([self.weights[(u, v)] for v in vs]) for u, vs in self.topo.out.items()}
        self.lost: set[str] = set()
        self.active: dict[object, _Active] = {}
        self.rng = rng or random.Random(0)  # unused by MaxFlow; kept for a uniform constructor

    @classmethod
    def from_plan(cls, plan: Any, kv_capacity: Mapping[str, int] | None = None, **kwargs: Any) -> MaxFlowRouter:
        return cls(plan.cluster, plan.model, plan.placement, plan.flow, kv_capacity, **kwargs)

    # ---------------------------------------------------------------- admission
    def route(self, request_id: object, prompt_len: int, expected_output: int | None = None) -> Route | None:
        """Choose a route for a new request, or None when no node has room (nothing is reserved then)."""
        if request_id in self.active:
            raise ValueError(f"request {request_id!r} is already routed")
        own = expected_output if self.improved else None
        length = self.kv.expected_length(prompt_len, own)
        work = float(prompt_len + (expected_output or 0)) if self.improved else float(prompt_len)
        hops, indices, node = [], [], COORDINATOR
        while True:
            targets = self.topo.out.get(node, [])
            allowed = self._allowed(node, targets, prompt_len, length)
            i = self.iwrr[node].choose(work, allowed) if targets else -1
            if i < 0:
                self._release(indices, work)
                return None
            nxt = targets[i]
            indices.append((node, i))
            bw = (self.topo.nic_share_bandwidth if self.improved else self.topo.flow_share_bandwidth)(node, nxt)
            hops.append(Hop(nxt, self.topo.layers_after(node, nxt), bw))
            if nxt == COORDINATOR:
                break
            node = nxt
        route = Route(request_id, tuple(hops))
        for hop in hops[:-1]:
            self.kv.add(hop.node, length, hop.layers.size)
        self.active[request_id] = _Active(route, indices, length, work)
        return route

    def _allowed(self, node: str, targets: list[str], prompt_len: int, length: int) -> list[bool]:
        flows = [self.weights[(node, v)] for v in targets]
        floor = FLOW_FLOOR * sum(flows)
        allowed = []
        for v, f in zip(targets, flows, strict=False):
            ok = not f < floor and v not in self.lost
            if ok and v != COORDINATOR:
                ok = prompt_len <= self.max_prompt[v] and self.kv.can_add(v, length)
            allowed.append(ok)
        return allowed

    def _release(self, indices: list[tuple[str, int]], work: float) -> None:
        for node, i in indices:
            self.iwrr[node].release(work, i)

    # ---------------------------------------------------------------- observations
    def on_decode_step(self, request_id: object, tokens: int = 1) -> None:
        """A decode iteration of `request_id` was issued (reference: charge 1 token to every hop)."""
        if self.improved:
            return
        for node, i in self.active[request_id].indices:
            self.iwrr[node].add(tokens, i)

    on_tokens = on_decode_step

    def on_finish(self, request_id: object) -> None:
        """The request finished (or was aborted): free its KV reservation (and, improved, its load)."""
        state = self.active.pop(request_id, None)
        if state is None:
            return
        for hop in state.route.hops[:-1]:
            self.kv.remove(hop.node, state.kv_length, hop.layers.size)
        if self.improved:
            self._release(state.indices, state.work)

    def on_node_lost(self, node: str) -> list[object]:
        """Stop routing through `node`; returns the ids of active requests whose route used it."""
        self.lost.add(node)
        return [rid for rid, s in self.active.items() if node in s.route.nodes]

    def on_node_back(self, node: str) -> None:
        self.lost.discard(node)

    def set_kv_capacity(self, node: str, slots: int) -> None:
        self.kv.resize(node, slots)

    def reweight(self, arc_flow: Mapping[tuple[str, str], float]) -> None:
        """Weigh the arcs by these flows from now on (arcs not given carry none); the load of the requests in
        flight is charged again under the new weights, so their release later stays balanced."""
        self.weights = {a: float(arc_flow.get(a, 0.0)) for a in self.topo.flow}
        # an arc without flow is never allowed (FLOW_FLOOR); a tiny weight keeps IWRR's arithmetic finite
        self.iwrr = {u: IWRR([max(self.weights[(u, v)], 1e-9) for v in vs]) for u, vs in self.topo.out.items()}
        for state in self.active.values():
            for node, i in state.indices:
                self.iwrr[node].add(state.work, i)

    def bottleneck_usage(self) -> float:
        """Largest expected KV fill fraction over layers (the offline feeder's throttle)."""
        return self.kv.bottleneck_usage()


class _HopByHopRouter:
    """Baseline routers: pick each next hop among layer-compatible arcs (no flow weights)."""

    name = "baseline"

    def __init__(self, cluster: ClusterSpec, model: ModelSpec, placement: Placement, flow: FlowResult,
                 kv_capacity: Mapping[str, int] | None = None, *, rng: random.Random | None = None, **_):
        self.topo = _Topology(cluster, placement, flow)
        self.max_prompt = prompt_limits(cluster, model, placement)
        self.rng = rng or random.Random(0)
        self.lost: set[str] = set()
        self.active: dict[object, Route] = {}

    @classmethod
    def from_plan(cls, plan: Any, kv_capacity: Mapping[str, int] | None = None, **kwargs: Any) -> _HopByHopRouter:
        return cls(plan.cluster, plan.model, plan.placement, plan.flow, kv_capacity, **kwargs)

    def route(self, request_id: object, prompt_len: int, expected_output: int | None = None) -> Route | None:
        hops, node = [], COORDINATOR
        while node != COORDINATOR or not hops:
            targets = [v for v in self.topo.out.get(node, []) if v not in self.lost
                       and (v == COORDINATOR or prompt_len <= self.max_prompt[v])]
            if not targets:
                return None
            nxt = self._pick(node, targets)
            bw = self.topo.nic_share_bandwidth(node, nxt)
            hops.append(Hop(nxt, self.topo.layers_after(node, nxt), bw))
            node = nxt
        route = Route(request_id, tuple(hops))
        self.active[request_id] = route
        return route

    def _pick(self, node: str, targets: list[str]) -> str:
        raise NotImplementedError

    def on_decode_step(self, request_id: object, tokens: int = 1) -> None:
        pass

    on_tokens = on_decode_step

    def on_finish(self, request_id: object) -> None:
        self.active.pop(request_id, None)

    def on_node_lost(self, node: str) -> list[object]:
        self.lost.add(node)
        return [rid for rid, r in self.active.items() if node in r.nodes]

    def on_node_back(self, node: str) -> None:
        self.lost.discard(node)

    def set_kv_capacity(self, node: str, slots: int) -> None:
        pass  # these routers admit without KV expectation

    def reweight(self, arc_flow: Mapping[tuple[str, str], float]) -> None:
        pass  # these routers weigh no arcs

    def bottleneck_usage(self) -> float:
        return 0.0


class RandomRouter(_HopByHopRouter):
    """Reference `Naive`: a uniformly random compatible next hop."""

    name = "random"

    def _pick(self, node: str, targets: list[str]) -> str:
        return targets[self.rng.randrange(len(targets))] if len(targets) > 1 else targets[0]


class ShortestQueueRouter(_HopByHopRouter):
    """Next hop = the compatible node with the fewest queued requests (the coordinator always wins);
    ties broken at random. `queue_length(node)` is the caller's observation."""

    name = "shortest-queue"

    def __init__(self, *args, queue_length: Callable[[str], int] = lambda node: 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.queue_length = queue_length

    def _pick(self, node: str, targets: list[str]) -> str:
        if COORDINATOR in targets:
            return COORDINATOR
        lengths = [self.queue_length(v) for v in targets]
        best = [v for v, q in zip(targets, lengths, strict=False) if q == min(lengths)]
        return best[self.rng.randrange(len(best))] if len(best) > 1 else best[0]


class SwarmRouter(_HopByHopRouter):
    """SWARM-style: per node, pick the arc with the smallest priority, then add its EMA hop time to it.
    The caller reports measured hop times (send + queue + compute at the next node) via `on_hop_time`."""

    name = "swarm"

    def __init__(self, *args, initial_priority: float = 0.05, ema_weight: float = 0.8, **kwargs):
        super().__init__(*args, **kwargs)
        self.ema_weight = ema_weight
        arcs = [(u, v) for u, vs in self.topo.out.items() for v in vs]
        self.priority = dict.fromkeys(arcs, initial_priority)
        self.ema = dict.fromkeys(arcs, initial_priority)

    def _pick(self, node: str, targets: list[str]) -> str:
        best = min(targets, key=lambda v: self.priority[(node, v)])
        self.priority[(node, best)] += self.ema[(node, best)]
        return best

    def on_hop_time(self, src: str, dst: str, seconds: float) -> None:
        a = (src, dst)
        self.ema[a] = self.ema_weight * seconds + (1 - self.ema_weight) * self.ema[a]


ROUTERS: dict[str, type[Router]] = {"maxflow": MaxFlowRouter, "random": RandomRouter,
                                    "shortest-queue": ShortestQueueRouter, "swarm": SwarmRouter}
