"""One cluster node (`vllm-helix worker --plan P --node N`): a partial-layer worker behind the transport.

Loop: say Hello to the coordinator until it answers Start (so start order does not matter); then take
every queued Step (possibly from several previous hops and several in-flight batches), run them as one
batch on the partial-layer worker, and send each request's output to the next node of its route — the
sampled tokens to the coordinator on the last range. A failing batch is reported as Failed for its
requests; the node keeps serving.

Elastic serving: a next hop that cannot be reached is reported (HopLost) so the coordinator reroutes; when the
coordinator takes the node out of routing (Reset) or is lost, the node forgets every request and says Hello
again until it is let back in; on SIGTERM it asks to drain and leaves when the coordinator says so.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from vllm_helix import wire as p
from vllm_helix.errors import FrameRejected, HelixError, NodeError, PeerLost, StartupError, TransportTimeout
from vllm_helix.node.async_feed import AsyncFeed
from vllm_helix.node.types import HiddenBatch, StepItem, StreamBlock, TokenResult, rows_in_order
from vllm_helix.trace import tracer
from vllm_helix.wire import COORDINATOR_PEER, Channel, Received

if TYPE_CHECKING:
    from vllm_helix.node.partial_worker import PartialLayerWorker

logger = logging.getLogger(__name__)
HELLO_INTERVAL_S = 0.5
STATS_INTERVAL_S = 10.0  # the node's own log line
REPORT_INTERVAL_S = 1.0  # Busy to the coordinator while serving: its metrics and plan-vs-real checks
DRAIN_TIMEOUT_S = 120.0  # a draining node leaves after this even if the coordinator never answers
KV_WAIT_S = 5.0  # a batch short of KV blocks waits this long for the Frees that make its room (see _wait_for_kv)


@dataclass
class _Stats:
    """How busy the node was since the last report: the first thing to look at when a cluster is slow."""

    since: float = field(default_factory=time.monotonic)
    busy_s: float = 0.0
    batches: int = 0
    tokens: int = 0
    decode_seqs: int = 0

    def add(self, seconds: float, tokens: int, decode_seqs: int = 0) -> None:
        self.busy_s += seconds
        self.batches += 1
        self.tokens += tokens
        self.decode_seqs += decode_seqs

    def due(self) -> bool:
        return time.monotonic() - self.since >= STATS_INTERVAL_S

    def report(self, node: str) -> _Stats:
        """Log and start over (every STATS_INTERVAL_S)."""
        wall = time.monotonic() - self.since
        if self.batches:
            logger.info("node %s: busy %.0f%% of the last %.0f s, %d batches, %.0f tokens/s, %.1f ms per batch",
                        node, 100 * self.busy_s / wall, wall, self.batches, self.tokens / wall,
                        1e3 * self.busy_s / self.batches)
        return _Stats()


@dataclass
class _Pending:
    """Steps taken from the queue for one worker batch."""

    items: list[StepItem] = field(default_factory=list)
    stream: list[StreamBlock] = field(default_factory=list)  # the previous hops' rows, a block per step
    wire: dict[str, p.Item] = field(default_factory=dict)  # request id -> its item as the next hop gets it
    step_of: dict[str, int] = field(default_factory=dict)  # request id -> step id
    tokens: int = 0
    arrived: dict[int, float] = field(default_factory=dict)  # step id -> when it came off the transport (tracing)
    sent: dict[int, float] = field(default_factory=dict)  # step id -> when its output was queued (tracing)
    held: dict[int, float] = field(default_factory=dict)  # async: step id -> when it came, to wait for its token
    handed: float | None = None  # async, last node: when its tokens were queued to the first nodes (tracing)
    cpu_start: float = field(default_factory=time.thread_time)  # this thread's CPU time when collecting began


class NodeServer:
    def __init__(self, name: str, worker: PartialLayerWorker, channel: Channel, addresses: dict[str, str],
                 predecessors: Sequence[str] = (), public_keys: dict[str, str] | None = None,
                 progress: Callable[[str], None] | None = None):
        self.name, self.worker, self.channel = name, worker, channel
        self.progress = progress  # start-up phases, logged here and at the coordinator
        self.calibration: p.Calibration | None = None  # the worker's start-up probe, told in every Hello
        self.probed = False  # the probe ran (when the coordinator asked: Calibrate)
        self.addresses = addresses  # peer name -> transport address
        self.predecessors = list(predecessors)  # nodes that may send us steps (encrypted channels)
        self.public_keys = dict(public_keys or {})  # peer name -> CURVE public key, the coordinator's at Start
        # a batch stays within the worker's own vLLM limits
        self.token_budget = worker.config.max_num_batched_tokens
        self.seq_budget = worker.config.max_num_seqs
        self.routes: dict[str, list[str]] = {}
        # async scheduling: tokens from the last node to the first (async_feed.py)
        self.feed = AsyncFeed(worker.is_first, worker.is_last)
        self.deferred: list[Received] = []
        self._dialled: set[str] = set()  # next hops connected to
        self.running = True
        self.rejoin_reason: str | None = None  # out of routing: forget everything, say Hello again
        self.drain_deadline: float | None = None  # SIGTERM: when to leave at the latest
        self.joining = True  # saying Hello, not in routing (yet, or again)
        self.start_timeout_s = 600.0
        self.stats = _Stats()  # since the last report
        self.served = _Stats()  # since the start, reported to the coordinator
        self.trace = tracer(name)  # VLLM_HELIX_TRACE: per-batch timestamps (None: off)
        self._reported = 0.0  # when the last Busy went out
        self.kv_wait_s = KV_WAIT_S

    # ------------------------------------------------------------------ start-up

    def hello(self) -> p.Hello:
        stats = self.worker.kv_stats()
        return p.Hello(self.name, [self.worker.start, self.worker.end], stats.total_tokens, stats.block_size,
                       self.worker.hidden_size, self.worker.dtype, self.calibration, self.probed)

    def calibrate(self) -> None:
        """Run the start-up probe, once per process: a node rejoining later keeps the one it ran at start."""
        if self.probed:
            return
        if self.progress is not None:
            self.progress("calibrating")
        self.calibration = self.worker.calibrate()  # the coordinator compares it with the plan (coordinator/drift.py)
        self.probed = True

    def wait_for_start(self, timeout_s: float) -> None:
        self.start_timeout_s = timeout_s  # also how long a node out of routing tries to rejoin
        deadline = time.monotonic() + timeout_s
        self.joining = True
        while time.monotonic() < deadline:
            if not self.running:  # SIGTERM while out of routing: nothing held, nothing to hand back
                return
            try:
                self.channel.send(COORDINATOR_PEER, self.hello())  # queued until the coordinator is there
            except (PeerLost, TransportTimeout):  # not up yet; the transport keeps re-dialling it
                time.sleep(HELLO_INTERVAL_S)
                continue
            try:
                received = self.channel.recv(HELLO_INTERVAL_S)
            except (FrameRejected, PeerLost):
                continue  # the coordinator may not be up yet
            if received is None:
                continue
            message = received.message
            if isinstance(message, p.Calibrate):
                self.calibrate()  # the next Hello carries it
                continue
            if isinstance(message, p.Start):
                self._trust(message.public_keys)
                logger.info("node %s: cluster started", self.name)
                self.joining = False
                return
            if isinstance(message, p.Shutdown):
                raise StartupError(f"node {self.name}: the coordinator shut down before the cluster started")
            if isinstance(message, p.Reset):
                continue  # already out, already saying Hello
            self.deferred.append(received)
        raise StartupError(f"node {self.name}: no coordinator at {self.addresses.get(COORDINATOR_PEER)} "
                         f"after {timeout_s:.0f} s")

    def _trust(self, public_keys: dict[str, str]) -> None:
        """The coordinator's keys win over this host's plan copy, so a rotated neighbour needs no copy here."""
        if not self.channel.encrypted or not public_keys:
            return
        rotated = [n for n, key in public_keys.items() if self.public_keys.get(n, key) != key]
        self.public_keys.update(public_keys)
        for peer in set(rotated) & self.channel.peers():  # dialled with its old key: dial again
            self.channel.rekey(peer, self.public_keys[peer])
        self.channel.allow([self.public_keys[n] for n in (COORDINATOR_PEER, *self.predecessors)])

    # ------------------------------------------------------------------ serving

    def serve_forever(self) -> None:
        # as vLLM's EngineCore does after start-up: the model's and vLLM's objects are never garbage, and a
        # full collection walking them would stall a step for many milliseconds
        gc.collect()
        gc.freeze()
        while self.running:
            if self.rejoin_reason is not None:
                self._rejoin()
            if self.drain_deadline is not None and time.monotonic() > self.drain_deadline:
                logger.warning("node %s: the coordinator did not release it within %.0f s; leaving", self.name,
                               DRAIN_TIMEOUT_S)
                return
            batch = self._collect(timeout_s=1.0)
            if batch.items:
                self._wait_for_kv(batch)
                self._run(batch)
            elif self.trace is not None:  # idle: the last batches' lines reach the disk before any SIGTERM
                self.trace.flush()
            if self.stats.due():
                self.stats = self.stats.report(self.name)
            if self.routes and time.monotonic() - self._reported >= REPORT_INTERVAL_S:
                self._report_busy()

    def _report_busy(self) -> None:
        served, kv = self.served, self.worker.kv_stats()
        busy = p.Busy(self.name, served.busy_s, served.batches, served.tokens, idle=not self.routes,
                      decode_seqs=served.decode_seqs, kv_used_blocks=kv.used_blocks, kv_total_blocks=kv.total_blocks,
                      bytes_sent=self.channel.payload_bytes_sent, bytes_received=self.channel.payload_bytes_received)
        self._reported = time.monotonic()
        with contextlib.suppress(PeerLost, TransportTimeout):  # the coordinator is gone: nobody to tell
            self.channel.send(COORDINATOR_PEER, busy)

    def _collect(self, timeout_s: float) -> _Pending:
        """Merge queued steps into one batch, never two steps of the same request (order matters)."""
        batch = _Pending()
        wait = timeout_s
        while True:
            received = self.deferred.pop(0) if self.deferred else self._receive(wait)
            if received is None:
                return batch
            wait = 0.0
            received, later = self.feed.split(received)  # async: what lacks its token waits for the last node
            if later is not None:
                self.feed.hold(later)
            if received is None:
                continue
            message = received.message
            if isinstance(message, p.Sampled):
                self.deferred.extend(self.feed.on_sampled(message.tokens, received.at))
                continue
            if isinstance(message, p.Step):
                if self.trace is not None:
                    batch.arrived.setdefault(message.step_id, received.at)
                    if received.held_at is not None:
                        batch.held.setdefault(message.step_id, received.held_at)
                try:
                    merged = self._merge(batch, message, received)
                except (FrameRejected, HelixError) as exc:  # that step fails, the node goes on
                    self._reply_failed(message.step_id, [i.request_id for i in message.items], exc)
                    continue
                if not merged:
                    batch.arrived.pop(message.step_id, None)
                    batch.held.pop(message.step_id, None)
                    self.deferred.insert(0, received)
                    return batch
            elif isinstance(message, p.Free):
                if any(rid in batch.step_of for rid in message.request_ids):  # run their queued step first
                    self.deferred.insert(0, received)
                    return batch
                self._free(message.request_ids)
            elif isinstance(message, p.Shutdown):
                self.running = False
                return batch
            elif isinstance(message, p.Reset):
                self._out_of_routing(f"the coordinator took it out of routing: {message.reason}")
                return batch
            elif isinstance(message, p.Start):  # while serving: a neighbour's key was rotated
                self._trust(message.public_keys)

    def _receive(self, wait: float) -> Received | None:
        """The transport's next message; None after `wait`, for a malformed message (dropped) or a lost link
        (the coordinator's takes the node out of routing)."""
        try:
            return self.channel.recv(wait)
        except FrameRejected as exc:
            logger.warning("node %s: dropped a malformed message: %s", self.name, exc)
        except PeerLost as exc:
            logger.warning("node %s: %s", self.name, exc)
            if getattr(exc, "peer", None) == COORDINATOR_PEER:
                self._out_of_routing("it lost the coordinator")
        return None

    def _wait_for_kv(self, batch: _Pending) -> None:
        """The coordinator admits a request into KV room a finished one leaves, and sends that one's Free to each
        of its nodes at once; the new request's step comes through the previous hops and may get here first. A
        batch short of blocks takes the Frees that arrive (other messages wait their turn) until it fits, for
        up to `kv_wait_s`; then it runs anyway, and fails as a full cache does."""
        deadline = time.monotonic() + self.kv_wait_s
        while self.worker.blocks_short(batch.items) > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                logger.warning("node %s: a batch is short of KV blocks and no Free made room in %.1f s", self.name,
                               self.kv_wait_s)
                return
            received = self._receive(min(left, 0.05))
            if received is None:
                if self.rejoin_reason is not None or not self.running:  # the coordinator is gone
                    return
                continue
            message = received.message
            if isinstance(message, p.Free) and not self._queued_steps_name(message.request_ids, batch):
                self._free(message.request_ids)
                continue
            self.deferred.append(received)
            if isinstance(message, (p.Shutdown, p.Reset)):
                return

    def _queued_steps_name(self, request_ids: list[str], batch: _Pending) -> bool:
        """A step of one of these requests is in `batch` or waiting: a Free of them must come after it."""
        wanted = set(request_ids)
        if wanted & batch.step_of.keys():
            return True
        return any(isinstance(r.message, p.Step) and any(i.request_id in wanted for i in r.message.items)
                   for r in self.deferred)

    def _merge(self, batch: _Pending, step: p.Step, received: Received) -> bool:
        gone = self.feed.gone(step)  # async scheduling: a step sent before these requests stopped
        self._check_known(step, gone)
        tokens = sum(item.num_tokens for item in step.items if item.request_id not in gone)
        clash = any(item.request_id in batch.step_of for item in step.items)
        too_big = batch.tokens + tokens > self.token_budget or len(batch.items) + len(step.items) > self.seq_budget
        if batch.items and (clash or too_big):
            return False
        kept = [item for item in step.items if item.request_id not in gone]
        stream = self._payload(step, received, kept)
        items, wire = [], {}  # the batch takes all of the step or nothing of it (a failing step fails alone)
        for item in kept:
            if item.new is not None and item.request_id not in self.routes:
                self.routes[item.request_id] = item.new.route
                self.feed.add(item.request_id, item.new)
                self.worker.add_request(item.request_id, item.new.prompt_token_ids,
                                        p.decode_sampling(item.new.sampling))
            token_ids = self.feed.token_ids(item)
            items.append(StepItem(item.request_id, item.start_position, item.num_tokens, token_ids,
                                  grammar_bitmask=_bitmask(item.grammar)))
            # the next hop gets the item as it came (the first step's NewRequest included), with the token
            wire[item.request_id] = item if token_ids is item.token_ids else msgspec.structs.replace(
                item, token_ids=token_ids)
        batch.items += items
        batch.wire.update(wire)
        batch.step_of.update(dict.fromkeys(wire, step.step_id))
        if stream is not None:
            batch.stream.append(stream)
        batch.tokens += tokens
        return True

    @staticmethod
    def _payload(step: p.Step, received: Received, kept: list[p.Item]) -> StreamBlock | None:
        """The step's rows of the residual stream as one block (none for the first hop), of the `kept` items."""
        if not received.tensors:
            return None
        counts = [item.num_tokens for item in step.items]
        if len(received.tensors) not in (1, 2) or any(t.shape[0] != sum(counts) for t in received.tensors):
            raise FrameRejected(f"step {step.step_id}: payloads do not match its {sum(counts)} tokens")
        if not kept:
            return None
        block = StreamBlock([item.request_id for item in step.items], counts, *received.tensors)
        if len(kept) == len(step.items):
            return block
        # async: a step sent before some of its requests stopped; the others' rows, in the step's order
        rows = rows_in_order([block], [item.request_id for item in kept], block.hidden_states.device)
        return StreamBlock([item.request_id for item in kept], [item.num_tokens for item in kept], *rows)

    def _run(self, batch: _Pending) -> None:
        started = time.monotonic()
        try:
            results = self.worker.execute(batch.items, batch.stream or None)
            busy = time.monotonic() - started
            decodes = sum(1 for item in batch.items if item.num_tokens == 1)
            for stats in (self.stats, self.served):
                stats.add(busy, batch.tokens, decodes)
        except Exception as exc:  # noqa: BLE001 - any failure fails these requests, not the node
            logger.exception("node %s: batch failed", self.name)
            for step_id, rids in _group(batch.step_of).items():
                self._reply_failed(step_id, rids, exc)
            return
        if self.worker.is_last:
            self._send_tokens(batch, results)  # type: ignore[arg-type]  # the last range returns TokenResults
        else:
            self._forward(batch, results)  # type: ignore[arg-type]  # the others a HiddenBatch
        if self.trace is not None:
            cpu = time.thread_time() - batch.cpu_start - self.worker.model_cpu  # the hop's own CPU on this thread
            cached = [item.start_position for item in batch.items if item.num_tokens == 1]
            self.trace.record({"node": self.name, "arrived": batch.arrived, "model": self.worker.model_span,
                               "sent": batch.sent, "held": batch.held, "handed": batch.handed, "cpu": cpu,
                               "tokens": batch.tokens, "seqs": len(batch.items), "decodes": decodes,
                               "context": sum(cached) / len(cached) if cached else None})

    def _reply_failed(self, step_id: int, request_ids: list[str], exc: Exception) -> None:
        self._to_coordinator(p.Failed(step_id, request_ids, self.name, f"{type(exc).__name__}: {exc}"))

    def _send_tokens(self, batch: _Pending, results: list[TokenResult]) -> None:
        self._hand_to_first(batch, results)  # first: the first node waits for them, the coordinator does not
        by_step: dict[int, list[p.TokenOut]] = {}
        for result in results:
            by_step.setdefault(batch.step_of[result.request_id], []).append(
                p.TokenOut(result.request_id, result.token_id, result.logprob_row, result.prompt_logprobs))
        for step_id, outs in by_step.items():
            # stamped before the send: a sender descheduled after it would stamp after the receiver has the message
            if self.trace is not None:
                batch.sent[step_id] = time.time()
            self._to_coordinator(p.Tokens(step_id, outs))  # never raises: a lost coordinator is handled inside

    def _hand_to_first(self, batch: _Pending, results: list[TokenResult]) -> None:
        """Async scheduling: each sampled token to its route's first node, which holds the next step for it."""
        if not self.feed.first_of:
            return
        ends = {item.request_id: item.start_position + item.num_tokens for item in batch.items}
        sampled = [(r.request_id, ends[r.request_id], r.token_id) for r in results if r.token_id is not None]
        handoffs = self.feed.handoffs(sampled)
        own = handoffs.pop(self.name, None)  # a one-node route: this node is its first node too
        if self.trace is not None and (handoffs or own):
            batch.handed = time.time()
        for first, message in handoffs.items():
            try:
                self._ensure_peer(first)
                self.channel.send(first, message)
            except (PeerLost, TransportTimeout) as exc:  # its step never starts: the coordinator reroutes them
                self._hop_lost(-1, [t[0] for t in message.tokens], first, exc)
        if own is not None:
            self.deferred.extend(self.feed.on_sampled(own.tokens, time.time()))

    def _forward(self, batch: _Pending, out: HiddenBatch) -> None:
        groups: dict[tuple[str, int], list[str]] = {}
        for rid in out.rows:  # the runner's row order, which each group's payload keeps
            groups.setdefault((self._next_hop(rid), batch.step_of[rid]), []).append(rid)
        for (peer, step_id), rids in groups.items():
            try:
                self._ensure_peer(peer)
                queued = time.time() if self.trace is not None else 0.0
                self.channel.send(peer, p.Step(step_id, [batch.wire[rid] for rid in rids]), out.blocks(rids))
                if self.trace is not None:
                    batch.sent[step_id] = queued
            except (PeerLost, TransportTimeout) as exc:  # the next hop is gone: the coordinator reroutes
                self._hop_lost(step_id, rids, peer, exc)

    def _next_hop(self, request_id: str) -> str:
        route = self.routes[request_id]
        return route[route.index(self.name) + 1]

    def _ensure_peer(self, peer: str) -> None:
        if peer in self._dialled:  # the transport keeps a dialled peer (and reports it lost)
            return
        if peer not in self.channel.peers():
            self.channel.connect(peer, self.addresses[peer], self.public_keys.get(peer))
        self._dialled.add(peer)

    def _free(self, request_ids: list[str]) -> None:
        self.feed.forget(request_ids)
        freed = [rid for rid in request_ids if rid in self.routes]
        for rid in freed:
            del self.routes[rid]
            self.worker.free_request(rid)
        if freed and not self.routes:
            self._report_busy()  # gone idle: the coordinator sums up the run


    # ------------------------------------------------------------------ elastic serving (membership, drain)

    def _check_known(self, step: p.Step, gone: set[str]) -> None:
        """A step of a request this node does not hold (one it freed, or from before it restarted) is refused;
        except async scheduling's extra step of a request that stopped (`gone`), which is dropped."""
        unknown = [i.request_id for i in step.items
                   if i.new is None and i.request_id not in self.routes and i.request_id not in gone]
        if unknown:
            raise NodeError(f"step {step.step_id}: requests {unknown} are not on this node")

    def _to_coordinator(self, message: p.Message) -> None:
        """Answer the coordinator; when it is gone, this node is out of routing (it rejoins once it is back)."""
        try:
            self.channel.send(COORDINATOR_PEER, message)
        except (PeerLost, TransportTimeout):
            self._out_of_routing("it lost the coordinator")

    def _hop_lost(self, step_id: int, request_ids: list[str], peer: str, exc: Exception) -> None:
        self._to_coordinator(p.HopLost(step_id, request_ids, self.name, peer, str(exc)))

    def _out_of_routing(self, reason: str) -> None:
        if self.drain_deadline is not None:  # draining anyway: nothing to rejoin for
            self.running = False
            return
        self.rejoin_reason = reason

    def _rejoin(self) -> None:
        """Forget every request (the coordinator moved them elsewhere) and say Hello until let back in."""
        logger.warning("node %s: %s; freeing %d requests and saying Hello again", self.name, self.rejoin_reason,
                       len(self.routes))
        self.rejoin_reason = None
        for rid in list(self.routes):
            self.worker.free_request(rid)
        self.routes.clear()
        self.feed.clear()
        self.deferred.clear()
        self.wait_for_start(self.start_timeout_s)

    def drain(self) -> None:
        """SIGTERM: ask the coordinator to move this node's requests elsewhere; leave when it says Shutdown."""
        if self.drain_deadline is not None:
            return
        if self.joining:  # out of routing (the coordinator is gone or has not let it in): it holds nothing
            logger.info("node %s: SIGTERM while out of routing; leaving", self.name)
            self.running = False
            return
        self.drain_deadline = time.monotonic() + DRAIN_TIMEOUT_S
        logger.info("node %s: draining (SIGTERM): no new requests; leaving once the coordinator moved ours", self.name)
        try:
            self.channel.send(COORDINATOR_PEER, p.Drain(self.name))
        except (PeerLost, TransportTimeout):
            self.running = False  # no coordinator to hand anything back to


def _bitmask(grammar: bytes) -> np.ndarray | None:
    if not grammar:
        return None
    if len(grammar) % 4:
        raise FrameRejected(f"a grammar bitmask of {len(grammar)} bytes is not int32 rows")
    return np.frombuffer(grammar, dtype=np.int32).copy()


def _group(step_of: dict[str, int]) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    for rid, step_id in step_of.items():
        groups.setdefault(step_id, []).append(rid)
    return groups
