"""The coordinator's side of a Helix cluster: bring the nodes up, route requests, move batches.

Used by HelixExecutor (batches) and HelixScheduler (admission), which run in the same engine-core
process; `current()` is how the scheduler finds the coordinator the executor created.

Elastic serving: a node is lost when its local process exits, its link reports PeerLost, a neighbour cannot
reach it (HopLost) or it asks to drain (SIGTERM). It leaves routing at once (the router is re-weighted with the
live max flow); its requests are dropped from the batches in flight and queued for the scheduler, which
preempts them (vLLM's recompute path) and admits them on a route that avoids the node. A node that says Hello
again — a restarted worker, a healed link — is checked and routes through it resume; dead local workers are
restarted with back-off (`local_nodes.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from vllm_helix import wire as p
from vllm_helix.coordinator.batches import BatchBook, MakeOutput
from vllm_helix.coordinator.launchers import launcher_for
from vllm_helix.coordinator.membership import Membership, stuck_nodes
from vllm_helix.coordinator.metrics import ClusterMetrics
from vllm_helix.coordinator.routing import PROBE_STEP, SPEED_STEP, RouteBook
from vllm_helix.errors import (
    ConfigError,
    FrameRejected,
    HelixError,
    NodeError,
    PeerLost,
    StartupError,
    TransportTimeout,
)
from vllm_helix.node.config import WorkerConfig
from vllm_helix.planner.files import load_plan
from vllm_helix.planner.keys import allowed_senders, identity, key_path
from vllm_helix.planner.plan import Plan
from vllm_helix.wire import COORDINATOR_PEER, Channel, open_channel

if TYPE_CHECKING:
    from vllm.v1.core.sched.output import GrammarOutput, SchedulerOutput
    from vllm.v1.outputs import ModelRunnerOutput

logger = logging.getLogger(__name__)
_current: ServingCoordinator | None = None
HOUSEKEEPING_S = 0.2
HELLO_GRACE_S = 5.0  # Hellos a node sent before it heard Start may arrive this long after it


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
        launcher = launcher_for(options["launcher"])
        self.plan = launcher.resolve_addresses(plan)
        curve = identity(self.plan, options["plan"], COORDINATOR_PEER, options["key"], options["insecure"])
        self.options = options
        self.book = BatchBook(make_output, options["step_timeout_s"], options.get("async", False))
        self.routes: RouteBook | None = None
        self.channel: Channel = open_channel(COORDINATOR_PEER, self.plan.cluster.coordinator.address, curve)
        names = launcher.names(plan)
        key_files = {n: str(key_path(options["plan"], n)) for n in names} if curve else {}
        self.workers = launcher.start(self.plan, names, model_path, local_node_config, key_files)
        self.kv_tokens: dict[str, int] = {}
        self.probed: set[str] = set()  # nodes whose start-up probe is in (start-up)
        self._probing = False  # start-up: every node was asked for its probe
        self.kv_block_tokens = 1
        self.members = Membership(list(plan.placement.ranges))
        self.busy: dict[str, p.Busy] = {}  # each node's latest report
        self.metrics = ClusterMetrics(plan, options["plan"], model_path,  # helix_* on /metrics
                                      follow_probes=options.get("follow_probes", False))
        self._served = False  # batches ran since the last summary
        self._busy_lock = threading.Lock()
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._receiver: threading.Thread | None = None
        self._housekeeping_at = 0.0
        _current = self

    # ------------------------------------------------------------------ start-up

    def start(self) -> None:
        """Wait for every node's Hello (any start order), have them all run their start-up probe at once, then
        tell them to start."""
        nodes = {n.name: n for n in self.plan.cluster.nodes if n.name in self.plan.placement.ranges}
        deadline = time.monotonic() + self.options["start_timeout_s"]
        self._hear_hellos(nodes, deadline, lambda: set(self.kv_tokens) == set(nodes), self._missing_message)
        for name in nodes:  # together: nodes sharing a host probe under the same load
            self.channel.send(name, p.Calibrate())
        self._probing = True
        self._hear_hellos(nodes, deadline, lambda: self.probed == set(nodes), self._unprobed_message)
        self.routes = RouteBook(self.plan, self.kv_tokens, self.kv_block_tokens, self.options)
        self.routes.metrics = self.metrics
        self._follow_speeds(PROBE_STEP)  # the nodes' start-up probes: the first requests follow their real speed
        for name in nodes:
            self.channel.send(name, p.Start(self.plan.public_keys if self.channel.encrypted else {}))
            self.members.up(name)
            self.workers.started(name)
        self._receiver = threading.Thread(target=self._receive_loop, name="helix-receiver", daemon=True)
        self._receiver.start()
        logger.info("Helix cluster up in %.1f s: %s", time.monotonic() - self._started,
                    ", ".join(f"{n} {self.plan.placement[n]}" for n in nodes))

    def _hear_hellos(self, nodes: dict, deadline: float, done: Callable[[], bool],
                     timeout_message: Callable[[dict], str]) -> None:
        while not done():
            if time.monotonic() > deadline:
                self.shutdown()
                raise StartupError(timeout_message(nodes))
            self._check_local_workers()
            try:
                received = self.channel.recv(0.5)
            except (FrameRejected, PeerLost) as exc:
                logger.warning("during start-up: %s", exc)
                continue
            if received is not None:
                self._on_hello(received.message, nodes)

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
        if message.node not in self.kv_tokens:  # its first Hello (it repeats them until Start)
            # dial back only now: a silent peer counts as lost
            self.channel.connect(message.node, nodes[message.node].address, self.plan.public_keys.get(message.node))
        self.kv_tokens[message.node] = message.kv_tokens
        self.kv_block_tokens = max(self.kv_block_tokens, message.kv_block_tokens)
        if message.probed and message.node not in self.probed:
            self.probed.add(message.node)
            self.metrics.on_calibration(message.node, message.calibration)
        elif not message.probed and self._probing:  # asked already, but a node that restarted since was not
            with contextlib.suppress(PeerLost, TransportTimeout):  # a node that has probed ignores it
                self.channel.send(message.node, p.Calibrate())

    def _unprobed_message(self, nodes: dict) -> str:
        missing = ", ".join(sorted(set(nodes) - self.probed))
        return (f"Helix nodes did not finish their start-up probe within {self.options['start_timeout_s']:.0f} s: "
                f"{missing}; their logs say why")

    def _missing_message(self, nodes: dict) -> str:
        missing = [n for n in nodes if n not in self.kv_tokens]
        where = ", ".join(f"{n} at {nodes[n].address}" for n in missing)
        keys = (" with its key file (--key); a refused key is logged above with its address"
                if self.channel.encrypted else "")
        return (f"Helix nodes did not come up within {self.options['start_timeout_s']:.0f} s: {where}. "
                f"Start them with `vllm-helix worker --plan PLAN --node NAME` on their hosts{keys}.")

    def _check_local_workers(self) -> None:
        for name, status in self.workers.exited().items():
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
        self._send_frees(self.book.take_retired())  # incarnations of requests vLLM preempted by itself
        # tracing: stamped before the sends, so that no hop can have the step before it was sent
        queued = time.time() if self.book.trace is not None else 0.0
        for hop, step in steps.items():
            try:
                self.channel.send(hop, step)
            except (PeerLost, TransportTimeout) as exc:
                self._lose(hop, str(exc))
        self.book.sent(batch, queued)
        return batch.future

    def _free(self, request_ids: set[str]) -> None:
        self._send_frees(self.book.forget(set(request_ids)))

    def _send_frees(self, routes: dict[str, list[str]]) -> None:
        """Tell the nodes that hold them to free these requests (ids on the nodes -> routes)."""
        by_node: dict[str, list[str]] = {}
        for wire_id, route in routes.items():
            for node in route:
                by_node.setdefault(node, []).append(wire_id)
        for node, wire_ids in by_node.items():
            if self.members.reachable(node):
                try:
                    self.channel.send(node, p.Free(wire_ids))
                except (PeerLost, TransportTimeout) as exc:
                    self._lose(node, str(exc))

    def take_reroutes(self) -> set[str]:
        """Requests to move off their route (the scheduler preempts them): their route lost a node."""
        return self.members.take_reroutes()

    def retire(self, request_ids: list[str]) -> None:
        """The scheduler preempted these requests: the nodes of their old routes free them."""
        self._send_frees(self.book.retire(request_ids))

    def _receive_loop(self) -> None:
        while not self._stop.is_set():
            try:
                received = self.channel.recv(0.2)
            except FrameRejected as exc:
                logger.warning("dropped a malformed message: %s", exc)
                continue
            except PeerLost as exc:
                self._lose(getattr(exc, "peer", None), f"its link was lost ({exc})")
                continue
            finally:
                self._housekeeping()
                self.metrics.tick()
            if received is None:
                if self.book.trace is not None:  # idle: the last steps' lines reach the disk before any SIGTERM
                    self.book.trace.flush()
                continue
            message = received.message
            if isinstance(message, p.Tokens):
                self.book.on_tokens(message)
            elif isinstance(message, p.Busy):
                self._on_busy(message)
                self.metrics.on_busy(message)
                self._follow_speeds()
            elif isinstance(message, p.Failed):
                failed = self.book.on_failed(message.step_id, message.request_ids,
                                             f"node {message.node}: {message.error}")
                if failed:
                    self.metrics.on_failed(len(failed))
                    logger.error("node %s failed requests %s: %s", message.node, failed, message.error)
            else:
                self._on_membership(message)

    def _follow_speeds(self, step: float = SPEED_STEP) -> None:
        if self.routes is not None:
            now = time.monotonic()
            self.routes.follow_speeds(self.metrics.routing_ratios(now), now, step)

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

    # ------------------------------------------------------------------ membership (elastic serving)

    def _housekeeping(self) -> None:
        """Step timeouts, local workers, drains, lost nodes heard again: every HOUSEKEEPING_S, not per message."""
        now = time.monotonic()
        if now < self._housekeeping_at:
            return
        self._housekeeping_at = now + HOUSEKEEPING_S
        self._expire()
        self._watch_local_workers()
        self._finish_drains()
        self._reset_returned()
        if self.channel.encrypted:
            self._take_rotated_keys()

    def _on_membership(self, message: p.Message) -> None:
        if isinstance(message, p.HopLost):
            logger.warning("node %s cannot reach %s: %s", message.node, message.peer, message.error)
            self._lose(message.peer, f"{message.node} cannot reach it", reset=True)
        elif isinstance(message, p.Drain) and message.node in self.plan.placement.ranges:
            self._lose(message.node, "draining (SIGTERM)", draining=True)
        elif isinstance(message, p.Hello):
            self._on_rejoin(message)
        elif isinstance(message, p.Progress) and message.node in self.plan.placement.ranges:
            logger.info(message.line())  # a restarting node's start-up phases

    def _on_rejoin(self, hello: p.Hello) -> None:
        """A node said Hello while serving: a restarted worker, or one whose link healed. Check it, route through it."""
        node = hello.node
        if node not in self.plan.placement.ranges or self.routes is None:
            return
        if self.members.is_up(node):
            if self.members.since(node) < HELLO_GRACE_S:
                return  # a Hello sent before the node heard our Start
            self._lose(node, "it restarted")  # behind our back: whatever it held is gone
        problem = self._hello_problem(hello)
        if problem:
            if self.members.refuse(node, problem):
                logger.error("Helix node %s cannot rejoin: %s", node, problem)
            return
        self.kv_tokens[node] = hello.kv_tokens
        self.routes.block_tokens = max(self.routes.block_tokens, hello.kv_block_tokens)
        if self.channel.redial_if_lost(node):  # its Hello proves it is up: our link to it was what went stale
            logger.warning("Helix node %s said Hello over a link that said lost: dialled it again", node)
        if not hello.probed:  # a restarted worker probes first (alone: the others serve meanwhile)
            with contextlib.suppress(PeerLost, TransportTimeout):
                self.channel.send(node, p.Calibrate())
            return
        try:
            self.channel.send(node, p.Start(self.plan.public_keys if self.channel.encrypted else {}))
        except (PeerLost, TransportTimeout):
            return  # it says Hello again
        self.members.up(node)
        self.workers.started(node)
        self.metrics.on_calibration(node, hello.calibration)  # after on_node_lost forgot its old speed
        self.routes.node_back(node, hello.kv_tokens)
        self._follow_speeds(PROBE_STEP)
        logger.info("Helix node %s %s rejoined; %s", node, self.plan.placement[node], self.members.describe())

    def _take_rotated_keys(self) -> None:
        """`vllm-helix keys --rotate NODE` rewrote the plan: trust the node's new key and refuse the old one from
        now on; the other nodes hear of it too. Restarting that worker with its new key file is all that is left."""
        try:
            keys = load_plan(self.options["plan"]).public_keys  # cached until the file changes
        except HelixError:
            return  # being rewritten: next time
        nodes = self.plan.placement.ranges
        rotated = {n: k for n, k in keys.items() if n in nodes and self.plan.public_keys.get(n) != k}
        if not rotated:
            return
        self.plan = dataclasses.replace(self.plan, public_keys={**self.plan.public_keys, **rotated})
        self.channel.allow([self.plan.public_keys[n] for n in allowed_senders(self.plan, COORDINATOR_PEER)])
        for node, public in rotated.items():
            logger.info("Helix node %s has a new key (rotated): its old key is refused from now on", node)
            if node in self.channel.peers():
                self.channel.rekey(node, public)
        for node in nodes:
            if node not in rotated and self.members.is_up(node):
                # a Start while serving carries new keys: nodes trust them and dial rotated peers again;
                # lost nodes get them with their next Start
                with contextlib.suppress(PeerLost, TransportTimeout):
                    self.channel.send(node, p.Start(self.plan.public_keys))

    def _hello_problem(self, hello: p.Hello) -> str | None:
        expected = self.plan.placement.ranges[hello.node]
        if hello.layers != [expected.start, expected.end]:
            return f"it serves layers {hello.layers}, the plan says {expected}"
        if hello.dtype != self.dtype:
            return f"it runs {hello.dtype}, this server {self.dtype}"
        return None

    def _watch_local_workers(self) -> None:
        for name, status in self.workers.exited().items():
            if self.members.drained(name):
                continue  # it drained and left, as asked
            self._lose(name, f"local worker exited with status {status}")
            given_up = self.workers.plan_restart(name)
            if given_up:
                self.members.give_up(name, given_up)
                logger.error("Helix gives up on local node %s: %s", name, given_up)
        for name in self.workers.restart_due():
            self.members.restarting(name)

    def _expire(self) -> None:
        timeout = self.options["step_timeout_s"]
        late = self.book.expire()
        if not late or self.routes is None:
            return
        routes = self.routes.routes_of(late)  # before the scheduler moves them
        logger.error("Helix: no answer for requests %s within %.0f s; rerouting them", late, timeout)
        moved: set[str] = set()
        for node in stuck_nodes(routes, self.metrics.last_reports(), time.monotonic(), timeout):
            moved.update(self._lose(node, f"stuck in a step: no answer and no report for {timeout:.0f} s",
                                    reset=True))
        # once each: a request queued for rerouting twice could be taken, admitted and then moved again
        self.members.reroute(set(late) - moved)

    def _lose(self, node: str | None, reason: str, *, reset: bool = False, draining: bool = False) -> list[str]:
        """Stop routing through a lost node; the requests routed through it move to other routes (replayed).
        Returns those requests."""
        if node is None or node not in self.plan.placement.ranges or self.routes is None:
            return []
        affected = self.routes.node_lost(node)
        if affected is None:
            return []  # known already
        self.members.lose(node, reason, draining=draining)
        affected = sorted(set(affected) | set(self.book.drop(through=node)))
        self.members.reroute(affected)
        self.metrics.on_node_lost(node)
        self.metrics.on_rerouted(len(affected))
        log = logger.warning if draining else logger.error
        log("Helix node %s lost: %s; rerouting %d requests routed through it; %s", node, reason, len(affected),
            self.members.describe())
        if reset:  # it may still be up: it must forget what it holds before it rejoins
            with contextlib.suppress(PeerLost, TransportTimeout):
                self.channel.send(node, p.Reset(reason))
        return affected

    def _reset_returned(self) -> None:
        """A lost node heard again (a healed link, a process continued) still holds what it held: reset it, so it
        says Hello and rejoins clean."""
        alive = {n for n, state in self.channel.endpoint.peers().items() if state == "alive"}
        for node in self.members.lost_but(alive):
            with contextlib.suppress(PeerLost, TransportTimeout):
                self.channel.send(node, p.Reset("it was lost"))

    def _finish_drains(self) -> None:
        """A draining node whose requests all moved elsewhere may go."""
        for node in self.members.draining():
            if self.routes is not None and not self.routes.routes_through(node) and not self.book.holds(node):
                with contextlib.suppress(PeerLost, TransportTimeout):
                    self.channel.send(node, p.Shutdown())
                self.members.drained_out(node)
                logger.info("Helix node %s drained: it holds no request any more; told it to stop", node)

    def node_status(self) -> dict[str, str]:
        """Each node's state: up, lost (why), draining, drained, restarting, given up (why)."""
        return self.members.status()

    # ------------------------------------------------------------------ lifecycle

    def route_book(self) -> RouteBook:
        """The routes of the requests being served (the scheduler runs only once the cluster started)."""
        if self.routes is None:
            raise StartupError("the Helix cluster has not started: no routes yet")
        return self.routes

    def check_health(self) -> None:
        """Healthy while one complete route is alive (lost nodes only degrade the cluster; the log says how)."""
        if self.routes is not None and self.routes.live_flow <= 0:
            raise NodeError(f"no complete Helix route is alive; {self.members.describe()}")

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
