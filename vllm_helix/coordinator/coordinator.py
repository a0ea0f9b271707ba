"""The coordinator's side of a Helix cluster: bring the nodes up, route requests, move batches.

Used by HelixExecutor (batches) and HelixScheduler (admission), which run in the same engine-core
process; `current()` is how the scheduler finds the coordinator the executor created.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from vllm_helix import wire as p
from vllm_helix.coordinator.batches import BatchBook, MakeOutput
from vllm_helix.coordinator.local_nodes import LocalNodes, local_nodes, resolve_addresses
from vllm_helix.coordinator.metrics import ClusterMetrics, live_max_flow
from vllm_helix.coordinator.routing import RouteBook
from vllm_helix.errors import (
    ConfigError,
    FrameRejected,
    NodeError,
    PeerLost,
    StartupError,
    TransportTimeout,
)
from vllm_helix.node.config import WorkerConfig
from vllm_helix.planner.keys import identity, key_path
from vllm_helix.planner.plan import Plan
from vllm_helix.wire import COORDINATOR_PEER, Channel, open_channel

if TYPE_CHECKING:
    from vllm.v1.core.sched.output import GrammarOutput, SchedulerOutput
    from vllm.v1.outputs import ModelRunnerOutput

logger = logging.getLogger(__name__)
_current: ServingCoordinator | None = None


def current() -> ServingCoordinator:
    if _current is None:
        raise ConfigError("the Helix scheduler needs the Helix executor (vllm serve ... --executor helix)")
    return _current


class ServingCoordinator:
    def __init__(self, plan: Plan, model_path: str, options: dict[str, Any], make_output: MakeOutput,
                 local_node_config: WorkerConfig):
        global _current
        if plan.partial_inference:
            raise ConfigError("serving needs a plan with exact layer chaining (plan without --partial-inference)")
        self.dtype = local_node_config.dtype  # every node must run it
        curve = identity(plan, options["plan"], COORDINATOR_PEER, options["key"], options["insecure"])
        self.plan = resolve_addresses(plan)
        self.options = options
        self.book = BatchBook(make_output, options["step_timeout_s"])
        self.routes: RouteBook | None = None
        self.channel: Channel = open_channel(COORDINATOR_PEER, self.plan.cluster.coordinator.address, curve)
        key_files = {n: str(key_path(options["plan"], n)) for n in local_nodes(plan)} if curve else {}
        self.workers = LocalNodes.start(self.plan, local_nodes(plan), model_path, local_node_config, key_files)
        self.kv_tokens: dict[str, int] = {}
        self.kv_block_tokens = 1
        self.busy: dict[str, p.Busy] = {}  # each node's latest report
        self.metrics = ClusterMetrics(plan, options["plan"], model_path)  # helix_* on /metrics
        self._served = False  # batches ran since the last summary
        self._busy_lock = threading.Lock()
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._receiver: threading.Thread | None = None
        _current = self

    # ------------------------------------------------------------------ start-up

    def start(self) -> None:
        """Wait for every node's Hello (any start order), then tell them to start."""
        nodes = {n.name: n for n in self.plan.cluster.nodes if n.name in self.plan.placement.ranges}
        deadline = time.monotonic() + self.options["start_timeout_s"]
        while set(self.kv_tokens) != set(nodes):
            if time.monotonic() > deadline:
                self.shutdown()
                raise StartupError(self._missing_message(nodes))
            self._check_local_workers()
            try:
                received = self.channel.recv(0.5)
            except (FrameRejected, PeerLost) as exc:
                logger.warning("during start-up: %s", exc)
                continue
            if received is not None:
                self._on_hello(received.message, nodes)
        self.routes = RouteBook(self.plan, self.kv_tokens, self.kv_block_tokens, self.options)
        self.routes.metrics = self.metrics
        for name in nodes:
            self.channel.send(name, p.Start(self.plan.public_keys if self.channel.encrypted else {}))
        self._receiver = threading.Thread(target=self._receive_loop, name="helix-receiver", daemon=True)
        self._receiver.start()
        logger.info("Helix cluster up in %.1f s: %s", time.monotonic() - self._started,
                    ", ".join(f"{n} {self.plan.placement[n]}" for n in nodes))

    def _on_hello(self, message: p.Message, nodes: dict) -> None:
        if isinstance(message, p.Progress) and message.node in nodes:
            logger.info(message.line())  # the node's own start-up line, here for remote nodes too
        if not isinstance(message, p.Hello) or message.node not in nodes:
            return
        expected = self.plan.placement.ranges[message.node]
        if message.layers != [expected.start, expected.end]:
            raise StartupError(f"node {message.node} serves layers {message.layers}, the plan says {expected}: "
                               "start it with the plan file `vllm serve` was given")
        if message.dtype != self.dtype:
            self.shutdown()
            raise StartupError(f"node {message.node} runs {message.dtype}, this server {self.dtype}: "
                             f"start it with `vllm-helix worker ... --dtype {self.dtype}`, or give `vllm serve` "
                             f"--dtype {message.dtype}")
        if message.node not in self.kv_tokens:  # dial back only now: a silent peer counts as lost
            self.channel.connect(message.node, nodes[message.node].address, self.plan.public_keys.get(message.node))
        self.kv_tokens[message.node] = message.kv_tokens
        self.kv_block_tokens = max(self.kv_block_tokens, message.kv_block_tokens)

    def _missing_message(self, nodes: dict) -> str:
        missing = [n for n in nodes if n not in self.kv_tokens]
        where = ", ".join(f"{n} at {nodes[n].address}" for n in missing)
        keys = (" with its key file (--key); a refused key is logged above with its address"
                if self.channel.encrypted else "")
        return (f"Helix nodes did not come up within {self.options['start_timeout_s']:.0f} s: {where}. "
                f"Start them with `vllm-helix worker --plan PLAN --node NAME` on their hosts{keys}.")

    def _check_local_workers(self) -> None:
        for name, status in self.workers.dead().items():
            if name not in self.kv_tokens:
                tail = self.workers.log_tail(name)
                self.shutdown()
                raise StartupError(f"local worker {name} exited with status {status} during start-up:\n{tail}")

    # ------------------------------------------------------------------ batches

    def submit(self, scheduler_output: SchedulerOutput,
               grammar_output: GrammarOutput | None = None) -> Future[ModelRunnerOutput]:
        self._free(scheduler_output.finished_req_ids)
        assert self.routes is not None
        batch, steps = self.book.build(scheduler_output, self.routes.routes, grammar_output)
        if steps:
            self._start_serving()
        for hop, step in steps.items():
            try:
                self.channel.send(hop, step)
            except (PeerLost, TransportTimeout) as exc:
                self._lose(hop, str(exc))
        return batch.future

    def _free(self, request_ids: set[str]) -> None:
        by_node: dict[str, list[str]] = {}
        for rid, route in self.book.forget(set(request_ids)).items():
            for node in route:
                by_node.setdefault(node, []).append(rid)
        for node, rids in by_node.items():
            if self.routes is None or node not in self.routes.lost:
                try:
                    self.channel.send(node, p.Free(rids))
                except (PeerLost, TransportTimeout) as exc:
                    self._lose(node, str(exc))

    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            try:
                received = self.channel.recv(0.2)
            except FrameRejected as exc:
                logger.warning("dropped a malformed message: %s", exc)
                continue
            except PeerLost as exc:
                self._lose(getattr(exc, "peer", None), str(exc))
                continue
            finally:
                self.book.expire()
                self._watch_local_workers()
                self.metrics.tick()
            if received is None:
                continue
            message = received.message
            if isinstance(message, p.Tokens):
                self.book.on_tokens(message)
            elif isinstance(message, p.Busy):
                self._on_busy(message)
                self.metrics.on_busy(message)
            elif isinstance(message, p.Failed):
                logger.error("node %s failed requests %s: %s", message.node, message.request_ids, message.error)
                self.metrics.on_failed(len(message.request_ids))
                self.book.on_failed(message.step_id, message.request_ids, f"node {message.node}: {message.error}")

    def _start_serving(self) -> None:
        with self._busy_lock:
            if not self._served:  # reports from before this work began do not say when it ends
                self._served = True
                self.busy.clear()

    def _on_busy(self, message: p.Busy) -> None:
        """Once every node has gone idle after some serving, log how busy each was: the run's summary."""
        live = set(self.plan.placement.ranges) - (self.routes.lost if self.routes else set())
        with self._busy_lock:
            self.busy[message.node] = message
            idle = all(n in self.busy and self.busy[n].idle for n in live)
            if not (self._served and idle and not self.book.requests):
                return
            self._served = False
        shares = ", ".join(f"{n} {100 * s:.0f}%" for n, s in self.busy_shares().items())
        logger.info("Helix cluster idle; node busy share since start: %s of %.2f s with batches in flight",
                    shares, self.book.serving_s)

    def _watch_local_workers(self) -> None:
        for name, status in self.workers.dead().items():
            self._lose(name, f"local worker exited with status {status}")

    def _lose(self, node: str | None, reason: str) -> None:
        """Stop routing through a lost node and fail the requests routed through it."""
        affected = None if node is None or self.routes is None else self.routes.node_lost(node)
        if affected is None:
            return
        logger.error("Helix node %s lost: %s; failing %d requests routed through it", node, reason, len(affected))
        self.book.fail_requests(affected, f"node {node} lost: {reason}")
        self.metrics.on_node_lost(str(node), live_max_flow(self.plan, self.routes.lost if self.routes else ()))
        self.metrics.on_failed(len(affected))

    # ------------------------------------------------------------------ lifecycle

    def route_book(self) -> RouteBook:
        """The routes of the requests being served (the scheduler runs only once the cluster started)."""
        if self.routes is None:
            raise StartupError("the Helix cluster has not started: no routes yet")
        return self.routes

    def check_health(self) -> None:
        if self.routes is not None and self.routes.lost:
            raise NodeError(f"Helix nodes lost: {sorted(self.routes.lost)}")

    def busy_shares(self) -> dict[str, float]:
        """Each node's compute time as a share of the time the cluster had batches in flight."""
        serving = self.book.serving_s
        with self._busy_lock:
            busy = sorted(self.busy.items())
        return {n: b.busy_s / serving for n, b in busy} if serving > 0 else {}

    def shutdown(self) -> None:
        global _current
        self._stop.set()
        for node in self.plan.placement.ranges:
            try:
                if node in self.channel.peers():
                    self.channel.send(node, p.Shutdown())
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        if self._receiver is not None:
            self._receiver.join(timeout=2)
        self.workers.stop()
        self.channel.close()
        self.metrics.close()
        if _current is self:
            _current = None
