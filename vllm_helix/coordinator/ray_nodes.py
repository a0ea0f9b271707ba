"""Plan nodes as Ray actors: `vllm serve ... --executor helix --helix-launcher ray` (README "Ray").

The server joins the running Ray cluster (`ray.init(address="auto")`, as vLLM's Ray backend does) and places
one actor per node of the plan on the Ray node that matches it: the one with the custom resource
`helix_node:<name>` (`ray start --resources '{"helix_node:a100-0": 1}'`), else the one whose IP is the host
of the node's plan address. The actor reserves the node's GPUs, picks a free port on its Ray node's IP and
reports it, so the plan needs no addresses; the coordinator fills them in (`resolve_addresses`), then each
actor runs the node's `vllm-helix worker` as its subprocess (a vLLM engine restarts cleanly in a process of
its own; the worker dies with its actor). Each node gets its own secret key file's content, if the plan has keys.

A watcher restarts a node whose actor died (a crash, a Ray node that came back) on the same Ray node and
address, so the other nodes' copy of the plan stays right. Same interface as LocalNodes: start/dead/log_tail/stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vllm_helix.errors import ConfigError, StartupError
from vllm_helix.node.config import WorkerConfig
from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.planner.plan import Plan, plan_to_dict

RESOURCE_PREFIX = "helix_node:"
LOCAL = "local"
PLACE_TIMEOUT_S = 120.0  # an actor Ray cannot place in this time (its GPUs are taken) is a start-up error
CALL_TIMEOUT_S = 10.0
WATCH_INTERVAL_S = 1.0
PORT_WAIT_S = 15.0
MAX_RESTARTS = 5
NOT_RUNNING = -1  # dead()'s status of a node whose actor died: it is being restarted
logger = logging.getLogger(__name__)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--helix-launcher ray needs Ray: pip install 'vllm-helix[ray]'") from None
    return ray


def connect_ray() -> Any:
    """Ray, joined to the running cluster: RAY_ADDRESS, else the one `ray start` left on this host (never a new
    local Ray instance); none there is a StartupError that says so."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    how = ("start one with `ray start --head` (and `ray start --address HEAD:6379` on the other hosts), or set "
           "RAY_ADDRESS")
    from ray._private.services import canonicalize_bootstrap_address

    try:
        address = canonicalize_bootstrap_address("auto")
    except ConnectionError:
        address = None
    if not address:
        raise StartupError(f"no Ray cluster to join on this host: {how}")
    host, _, port = address.rpartition(":")
    try:  # ray.init waits minutes for a cluster that is gone: ask first
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot reach the Ray cluster at {address} ({exc}): {how}") from None
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    return ray


# ------------------------------------------------------------------------------------ matching plan nodes to Ray


def plan_host(address: str) -> str | None:
    """The host of a plan address (`10.0.0.7:6100` -> `10.0.0.7`), None for `local` or a bare name."""
    if address == LOCAL or ":" not in address:
        return None
    return address.split("://")[-1].rsplit(":", 1)[0].strip("[]")


def plan_port(address: str) -> int:
    host = plan_host(address)
    return int(address.rsplit(":", 1)[1]) if host else 0


def match_nodes(plan: Plan, names: Sequence[str], ray_nodes: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each node's Ray resource to ask for: `helix_node:<name>` where a live Ray node has it, else `node:<ip>` of
    its plan address. Nodes that match no Ray node are one StartupError that names them all."""
    resources: set[str] = set()
    for ray_node in ray_nodes:
        if ray_node.get("Alive", True):
            resources.update(ray_node.get("Resources", {}))
    matched, missing = {}, []
    for name in names:
        host = plan_host(plan.cluster.node(name).address)
        if RESOURCE_PREFIX + name in resources:
            matched[name] = RESOURCE_PREFIX + name
        elif host and f"node:{host}" in resources:
            matched[name] = f"node:{host}"
        else:
            missing.append(f"{name}" + (f" (address {host})" if host else ""))
    if missing:
        raise StartupError(f"no Ray node matches Helix nodes {', '.join(missing)}: start their Ray nodes with "
                           f"`ray start --resources '{{\"{RESOURCE_PREFIX}NAME\": 1}}'`, or give them an address on "
                           "a Ray node's IP in the cluster file")
    return matched


def with_addresses(plan: Plan, addresses: Mapping[str, str], coordinator: str) -> Plan:
    cluster = plan.cluster
    nodes = tuple(dataclasses.replace(n, address=addresses.get(n.name, n.address)) for n in cluster.nodes)
    boss = dataclasses.replace(cluster.coordinator, address=coordinator)
    return dataclasses.replace(plan, cluster=ClusterSpec(nodes, cluster.links, boss, cluster.name))


def free_address(ip: str, port: int = 0) -> str:
    """`ip:port`, with a free port when `port` is 0 (a taken port fails here, naming the address). Bound as the
    transport binds (SO_REUSEADDR): the connections of a dead worker on that port do not keep it taken."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ip, port))
        return f"{ip}:{s.getsockname()[1]}"


def reserved_gpus(plan: Plan, name: str) -> int:
    node = plan.cluster.node(name)
    return 0 if node.gpu.lower() == "cpu" else node.gpu_count


# ------------------------------------------------------------------------------------ the actor (on the Ray node)


def _worker_process_setup() -> None:
    """In the worker process: SIGKILL when its actor dies, so a restarted actor finds its port free; and the normal
    scheduling priority, which Ray lowers for its workers (where allowed)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, 0)


class NodeActor:
    """One plan node's actor: reserves an address on its Ray node, runs the node's worker as a subprocess."""

    def __init__(self, name: str):
        self.name = name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"vllm-helix-ray-{name}-"))
        self.log = self.workdir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def reserve(self, port: int) -> str:
        """`ip:port` on this Ray node: `port` (waiting a little for a dead predecessor's worker to let it go), or a
        free one when 0."""
        import ray

        ip, deadline = ray.util.get_node_ip_address(), time.monotonic() + PORT_WAIT_S
        while True:
            try:
                return free_address(ip, port)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def start(self, plan_yaml: str, key: str | None, worker_args: list[str], shared_host: bool) -> int:
        plan_path = self.workdir / "plan.yaml"
        plan_path.write_text(plan_yaml)
        command = [sys.executable, "-m", "vllm_helix.cli", "worker", "--plan", str(plan_path), "--node", self.name,
                   *worker_args]
        if key is not None:
            key_path = self.workdir / f"{self.name}.key"
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key)
            command += ["--key", str(key_path)]
        from vllm_helix.host import shared_host_env

        env = shared_host_env() if shared_host else dict(os.environ)
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            preexec_fn=_worker_process_setup)
        return self.process.pid

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ------------------------------------------------------------------------------------ the launcher (coordinator)


@dataclass
class _Node:
    resource: str
    gpus: int
    actor: Any = None
    address: str = ""
    restarts: int = 0
    status: int | None = None  # why it is not running: the worker's exit status, NOT_RUNNING; None: running


class RayNodes:
    """The plan's nodes as Ray actors; `resolve_addresses` places them, `start` runs their workers."""

    def __init__(self) -> None:
        self.ray = connect_ray()
        self._actor_class = self.ray.remote(NodeActor)
        self.nodes: dict[str, _Node] = {}
        self._launch: tuple[str, list[str]] = ("", [])  # the plan text and worker args, for restarts
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._reported: set[str] = set()  # stopped nodes exited() has told the coordinator of

    # -------------------------------------------------------------- the launcher interface of the coordinator

    @staticmethod
    def names(plan: Plan) -> list[str]:
        """Every node of the plan runs on Ray."""
        return list(plan.placement.ranges)

    def resolve_addresses(self, plan: Plan) -> Plan:
        """Place every node's actor, fill in the addresses they reserved; a `local` coordinator listens on this
        Ray node's IP, where the workers can reach it."""
        names = self.names(plan)
        matched = match_nodes(plan, names, self.ray.nodes())
        for name in names:
            self.nodes[name] = _Node(matched[name], reserved_gpus(plan, name))
        pending = {name: self._place(name, plan_port(plan.cluster.node(name).address)) for name in names}
        for name, reply in pending.items():
            self.nodes[name].address = self._get(reply, PLACE_TIMEOUT_S, f"placing node {name} on Ray "
                                                 f"({self.nodes[name].resource}, {self.nodes[name].gpus} GPUs)")
        coordinator = plan.cluster.coordinator.address
        if coordinator == LOCAL:
            coordinator = free_address(self.ray.util.get_node_ip_address())
        addresses = {name: node.address for name, node in self.nodes.items()}
        logger.info("Helix: Ray placed %s", ", ".join(f"{n} at {a}" for n, a in addresses.items()))
        return with_addresses(plan, addresses, coordinator)

    def start(self, plan: Plan, names: list[str], model: str, config: WorkerConfig,
              key_files: dict[str, str] | None = None) -> RayNodes:
        for name, path in (key_files or {}).items():
            try:
                self._keys[name] = Path(path).read_text()
            except OSError as exc:
                raise StartupError(f"{path}: cannot read node {name}'s key file ({exc.strerror}) to hand it to its "
                                   "Ray actor; `vllm-helix keys --plan PLAN` writes it") from None
        self._launch = (yaml.safe_dump(plan_to_dict(plan), sort_keys=False), ["--model", model, *config.cli_args()])
        for name in names:
            self._get(self._start_worker(name), CALL_TIMEOUT_S, f"starting node {name}'s worker")
        self._watcher = threading.Thread(target=self._watch, name="helix-ray-watcher", daemon=True)
        self._watcher.start()
        return self

    def exited(self) -> dict[str, int]:
        """Nodes whose worker stopped since the last call, with its status (NOT_RUNNING: the actor died); each stop
        reported once. The watcher restarts them: the coordinator re-admits them when they say Hello."""
        with self._lock:
            stopped = {name: node.status for name, node in self.nodes.items() if node.status is not None}
            self._reported &= set(stopped)  # running again: a later stop is news
            gone = {name: status for name, status in stopped.items() if name not in self._reported}
            self._reported |= set(gone)
        return gone

    def started(self, name: str) -> None:
        pass  # restarts are counted per actor, not reset by a Hello

    def plan_restart(self, name: str) -> str | None:
        """Why `name` is given up on, if it is; Ray's watcher restarts it otherwise."""
        node = self.nodes.get(name)
        if node is None or node.restarts < MAX_RESTARTS:
            return None
        return f"its Ray actor was restarted {MAX_RESTARTS} times; its log ends:\n{self.log_tail(name)}"

    def restart_due(self) -> list[str]:
        return []  # the watcher restarts nodes as soon as it sees them stop

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            return self.ray.get(self.nodes[name].actor.log_tail.remote(lines), timeout=CALL_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - the actor is gone: no log to show
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2 * CALL_TIMEOUT_S)
        stops = [node.actor.stop.remote(timeout_s) for node in self.nodes.values() if node.actor is not None]
        with contextlib.suppress(Exception):  # best effort on the way out; killing the actors kills their workers
            self.ray.wait(stops, num_returns=len(stops), timeout=timeout_s + 5)
        for node in self.nodes.values():
            if node.actor is not None:
                self.ray.kill(node.actor)

    # -------------------------------------------------------------- placing and watching

    def _place(self, name: str, port: int) -> Any:
        """Create `name`'s actor on its Ray node; returns the reference to the address it reserves."""
        node = self.nodes[name]
        node.actor = self._actor_class.options(num_cpus=0, num_gpus=node.gpus, resources={node.resource: 0.001},
                                         max_restarts=0).remote(name)
        return node.actor.reserve.remote(port)

    def _start_worker(self, name: str) -> Any:
        plan_yaml, args = self._launch
        node = self.nodes[name]
        host = plan_host(node.address)
        shared = sum(plan_host(n.address) == host for n in self.nodes.values()) > 1  # nodes sharing one host
        return node.actor.start.remote(plan_yaml, self._keys.get(name), args, shared)

    def _get(self, reference: Any, timeout_s: float, doing: str) -> Any:
        try:
            return self.ray.get(reference, timeout=timeout_s)
        except self.ray.exceptions.GetTimeoutError:
            raise StartupError(f"Ray did not finish {doing} within {timeout_s:.0f} s (its resources taken?)") from None
        except self.ray.exceptions.RayError as exc:
            raise StartupError(f"Ray failed {doing}: {str(exc).splitlines()[-1]}") from None

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            for name, node in self.nodes.items():
                if self._stop.is_set():
                    return
                try:
                    status = self.ray.get(node.actor.poll.remote(), timeout=CALL_TIMEOUT_S)
                except self.ray.exceptions.GetTimeoutError:
                    continue  # busy or unreachable for now: ask again
                except self.ray.exceptions.RayError as exc:  # the actor died
                    status = self._restart(name, node, type(exc).__name__)
                else:
                    if status not in (None, 0, NOT_RUNNING):  # its worker crashed (0: it drained and left)
                        with self._lock:
                            node.status = status  # reported by exited() before it runs again
                        status = self._restart(name, node, f"worker exit status {status}")
                with self._lock:
                    node.status = status

    def _restart(self, name: str, node: _Node, why: str) -> int | None:
        """A new actor for `name` on its Ray node and address, running its worker; None when it runs. One that
        fails is killed: the next round tries again, up to MAX_RESTARTS in all."""
        with self._lock:
            node.status = NOT_RUNNING
        if node.restarts >= MAX_RESTARTS:
            return NOT_RUNNING
        node.restarts += 1
        logger.error("Helix: node %s stopped on Ray (%s); restarting it (%d of %d) at %s", name,
                     why, node.restarts, MAX_RESTARTS, node.address)
        self.ray.kill(node.actor)
        try:
            address = self._get(self._place(name, plan_port(node.address)), PLACE_TIMEOUT_S, f"re-placing {name}")
            if address != node.address:
                raise StartupError(f"node {name} came back at {address}, not at {node.address} where the other "
                                   "nodes know it: restart `vllm serve`")
            self._get(self._start_worker(name), CALL_TIMEOUT_S, f"restarting node {name}'s worker")
        except StartupError as error:
            logger.error("Helix: could not restart node %s: %s", name, error)
            self.ray.kill(node.actor)
            return NOT_RUNNING
        logger.info("Helix: restarted node %s on Ray at %s", name, address)
        return None
