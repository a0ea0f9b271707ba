"""The coordinator: admits queries through the router, issues their iterations, gathers finished ones.

A query is a prompt iteration followed by O decode iterations (O = output tokens, as in the reference
simulator); each decode is issued when the previous iteration reaches the coordinator and follows the
prompt's route. Offline mode keeps the cluster full (the reference's `OfflineRequestFeeder`): MaxFlow
launches one more query 0.1 s after a prompt or a query finishes while the router's expected KV
bottleneck is <= feed_hwm; the baselines launch one per finished query (constant concurrency).
A query the router cannot place is dropped in offline mode (reference) and waits in online mode.
With `engine` limits the iterations go out in a vllm-helix server's steps instead (sim/batching.py).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from vllm_helix.planner.cluster import COORDINATOR
from vllm_helix.planner.router import Route
from vllm_helix.sim.batching import EngineLimits, EngineSteps
from vllm_helix.sim.link import Link, reference_rate
from vllm_helix.sim.loop import EventLoop
from vllm_helix.sim.metrics import Metrics
from vllm_helix.sim.node import ComputeNode, Iteration
from vllm_helix.sim.workload import Arrival, LengthSampler

FEED_DELAY_S = 0.1


@dataclass(slots=True)
class Step:
    """One hop of a resolved route: the link, its reserved rate, where it lands, the entry layer there."""

    src: str
    link: Link
    rate: float
    target: object  # bound handler: ComputeNode.arrive or Coordinator.gather
    entry: int


class Query:
    __slots__ = ("id", "arrival", "prompt_len", "output_len", "done_tokens", "decoded", "path", "nodes",
                 "lane", "prefilled", "prompt_back", "in_flight")

    def __init__(self, qid: int, arrival: float, prompt_len: int, output_len: int):
        self.id, self.arrival = qid, arrival
        self.prompt_len, self.output_len = prompt_len, output_len
        self.done_tokens = 0
        self.decoded = 0
        self.path: list[Step] = []
        self.nodes: list[ComputeNode] = []
        # with engine steps (sim/batching.py): its route, prompt tokens scheduled / back, its iterations in flight
        self.lane: tuple[str, ...] = ()
        self.prefilled = self.prompt_back = self.in_flight = 0


class Coordinator:
    def __init__(self, loop: EventLoop, router, nodes: dict[str, ComputeNode], links: dict[tuple[str, str], Link],
                 metrics: Metrics, *, offline: bool, feed_until: float, feed_hwm: float,
                 lengths: LengthSampler | None, reference_compat: bool, own_lengths: bool,
                 engine: EngineLimits | None = None):
        self.loop, self.router, self.nodes, self.links, self.metrics = loop, router, nodes, links, metrics
        self.offline, self.feed_until, self.feed_hwm = offline, feed_until, feed_hwm
        self.lengths = lengths
        self.compat = reference_compat
        self.own_lengths = own_lengths  # give the router the request's real output length
        self.kv_feeder = router.name == "maxflow"
        self.waiting: deque[Query] = deque()
        self.active = 0
        self.issued = self.finished = self.rejected = self.deferred = 0
        self._next_id = 0
        for node in nodes.values():
            node.forward = self._forward
        # None: each iteration goes out on its own and nodes batch what is queued (the reference's model)
        self.engine = EngineSteps(self, engine, len(nodes)) if engine is not None else None

    # ------------------------------------------------------------------ admission
    def submit(self, arrival: Arrival) -> None:
        """Schedule a query to arrive at `arrival.time_s`."""
        self.loop.at(arrival.time_s, self._arrive, arrival)

    def _arrive(self, arrival: Arrival) -> None:
        q = Query(self._next_id, self.loop.now, arrival.input_tokens, arrival.output_tokens)
        self._next_id += 1
        self.issued += 1
        if not self._admit(q):
            if self.offline:
                self.rejected += 1
            else:
                self.deferred += 1
                self.waiting.append(q)

    def _admit(self, q: Query) -> bool:
        expected = q.output_len if self.own_lengths else None
        route = self.router.route(q.id, q.prompt_len, expected)
        if route is None:
            return False
        q.path = self._resolve(route)
        q.nodes = [self.nodes[h.node] for h in route.hops[:-1]]
        self.active += 1
        if self.engine is not None:
            self.engine.add(q)
        else:
            self.send(Iteration(q, True, q.prompt_len, 0, self.loop.now))
        return True

    def _resolve(self, route: Route) -> list[Step]:
        steps, src = [], COORDINATOR
        for hop in route.hops:
            link = self.links[(src, hop.node)]
            rate = reference_rate(hop.bandwidth_bytes_per_s, COORDINATOR in (src, hop.node)) if self.compat \
                else hop.bandwidth_bytes_per_s
            if hop.node == COORDINATOR:
                steps.append(Step(src, link, rate, self.gather, 0))
            else:
                steps.append(Step(src, link, rate, self.nodes[hop.node].arrive, hop.layers.start))
            src = hop.node
        return steps

    # ------------------------------------------------------------------ movement
    def send(self, it: Iteration) -> None:
        step = it.query.path[it.hop]
        now = self.loop.now
        it.sent_at = now
        self.loop.at(step.link.send(now, it.tokens, step.rate), step.target, it)

    def _forward(self, it: Iteration) -> None:
        it.hop += 1
        self.send(it)

    def gather(self, it: Iteration) -> None:
        if self.engine is not None:
            self.engine.back(it)
            return
        now, q = self.loop.now, it.query
        q.done_tokens += it.tokens
        latency = now - (q.arrival if it.prompt else it.issued)
        self.metrics.on_iteration_done(now, it.prompt, it.tokens, latency)
        if q.decoded < q.output_len:
            q.decoded += 1
            self.router.on_decode_step(q.id)
            self.send(Iteration(q, False, 1, q.done_tokens, now))
            if it.prompt and self.offline and self.kv_feeder:
                self._feed()
            return
        self._finish(q)

    def step_done(self, it: Iteration) -> bool:
        """An engine step came back with this iteration's token: account it; True when its query finished."""
        now, q = self.loop.now, it.query
        if it.prompt:
            q.prompt_back += it.tokens
            if q.prompt_back < q.prompt_len:
                return False  # a chunk of the prompt: no token yet
            q.done_tokens = q.prompt_len
            q.decoded = 1  # the prompt's pass samples the first output token (vLLM)
            self.metrics.on_iteration_done(now, True, q.prompt_len, now - q.arrival)
        else:
            q.done_tokens += 1
            q.decoded += 1
            self.metrics.on_iteration_done(now, False, 1, now - it.issued)
        if q.decoded < q.output_len:
            return False
        self._finish(q)
        return True

    def _finish(self, q: Query) -> None:
        for node in q.nodes:
            node.kv.free(q.id)
        self.router.on_finish(q.id)
        self.active -= 1
        self.finished += 1
        if self.offline:
            self._feed()
        while self.waiting and self._admit(self.waiting[0]):
            self.waiting.popleft()

    def _feed(self) -> None:
        now = self.loop.now
        if now > self.feed_until or self.lengths is None:
            return
        if self.kv_feeder and self.router.bottleneck_usage() > self.feed_hwm:
            return
        prompt, output = self.lengths.sample()
        self.submit(Arrival(now + FEED_DELAY_S, prompt, output))

    def feed_initial(self, count: int, start: float) -> None:
        for i in range(count):
            prompt, output = self.lengths.sample()
            self.submit(Arrival(start + i * FEED_DELAY_S, prompt, output))


def named_rng(seed: int, purpose: str) -> random.Random:
    """An independent stream per purpose (router, lengths, arrivals, ...), stable across runs."""
    return random.Random(f"vllm-helix:{purpose}:{seed}")
