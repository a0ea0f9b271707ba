"""Addresses for a plan's nodes, and local workers started as subprocesses.

Nodes whose address is `local` get a free loopback port and are started by the coordinator as
`vllm-helix worker` subprocesses; the others are started by the user on their hosts. A resolved copy of
the plan (every address filled in) is what local workers read.

A local worker that dies while serving is started again, on the same address, after a back-off that doubles
with every crash before it said Hello (1 s, 2 s, 4 s ...); after MAX_START_CRASHES such crashes in a row it is
given up on, with the tail of its log in the error.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vllm_helix.host import shared_host_env
from vllm_helix.node.config import WorkerConfig
from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.planner.plan import Plan, save_plan

LOCAL = "local"
MAX_START_CRASHES = 3
BACKOFF_S = 1.0  # the first restart's delay; doubled per crash before Hello, at most MAX_BACKOFF_S
MAX_BACKOFF_S = 30.0
logger = logging.getLogger(__name__)


_random = random.SystemRandom()  # not the global generator: simulations seed that one


def free_port() -> int:
    """A loopback port free now, from below the kernel's ephemeral range where it can: a port bind(0) hands
    out is one the kernel also gives outgoing connections as their source port (a node dialling a coordinator
    that is not up yet, again and again), which can take it before our server binds it (CI: `vllm serve`'s
    port, 'Address already in use')."""
    low = _ephemeral_low()
    for port in _random.sample(range(10_000, low), min(64, max(0, low - 10_000))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a host that leaves no room below its ephemeral range
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def resolve_addresses(plan: Plan) -> Plan:
    """Give every `local` node (and a local coordinator) a free loopback port."""
    cluster = plan.cluster

    def resolved(address: str) -> str:
        return f"127.0.0.1:{free_port()}" if address == LOCAL else address

    nodes = tuple(dataclasses.replace(n, address=resolved(n.address)) for n in cluster.nodes)
    coordinator = dataclasses.replace(cluster.coordinator, address=resolved(cluster.coordinator.address))
    return dataclasses.replace(plan, cluster=ClusterSpec(nodes, cluster.links, coordinator, cluster.name))


def local_nodes(original: Plan) -> list[str]:
    return [n.name for n in original.cluster.nodes if n.address == LOCAL and n.name in original.placement.ranges]


@dataclasses.dataclass
class LocalNodes:
    """Subprocess workers for the plan's local nodes; logs go to one file per node."""

    processes: dict[str, subprocess.Popen]  # the running ones
    logs: dict[str, Path]
    commands: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    crashes: dict[str, int] = dataclasses.field(default_factory=dict)  # exits in a row before saying Hello
    greeted: set[str] = dataclasses.field(default_factory=set)  # said Hello since their last start
    restart_at: dict[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def start(cls, plan: Plan, names: list[str], model: str, config: WorkerConfig,
              key_files: dict[str, str] | None = None) -> LocalNodes:
        workdir = Path(tempfile.mkdtemp(prefix="vllm-helix-"))
        plan_path = workdir / "plan.yaml"
        save_plan(plan, plan_path)
        env = shared_host_env()  # the local nodes share this host
        nodes = cls({}, {}, env=env)
        for name in names:
            nodes.logs[name] = workdir / f"{name}.log"
            command = [sys.executable, "-m", "vllm_helix.cli", "worker", "--plan", str(plan_path), "--node", name,
                       "--model", model, *config.cli_args()]
            if key_files and name in key_files:  # the resolved plan lives elsewhere: say where the key is
                command += ["--key", key_files[name]]
            nodes.commands[name] = command
            nodes._launch(name, "w")
        if names:
            logger.info("Helix: started local nodes %s (logs: %s/<node>.log)", ", ".join(names), workdir)
        return nodes

    def _launch(self, name: str, mode: str) -> None:
        with open(self.logs[name], mode) as log:
            self.processes[name] = subprocess.Popen(self.commands[name], stdout=log, stderr=subprocess.STDOUT,
                                                    env=self.env, start_new_session=True)
        self.greeted.discard(name)

    def exited(self) -> dict[str, int]:
        """Workers that exited since the last call, with their exit status (each exit reported once)."""
        gone = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
        for name in gone:
            del self.processes[name]
        return gone

    def started(self, name: str) -> None:
        """It said Hello: up and serving (a later exit is not a start-up crash)."""
        self.greeted.add(name)
        self.crashes[name] = 0

    def plan_restart(self, name: str) -> str | None:
        """Schedule a restart of an exited worker; returns why it is given up on instead, if it is."""
        if name not in self.commands:
            return None  # not a local node
        if name not in self.greeted:
            self.crashes[name] = self.crashes.get(name, 0) + 1
        crashes = self.crashes.get(name, 0)
        if crashes >= MAX_START_CRASHES:
            return f"it exited {crashes} times in a row before it came up; its log ({self.logs[name]}) ends:\n" \
                   + self.log_tail(name)
        delay = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** crashes)
        self.restart_at[name] = time.monotonic() + delay
        logger.warning("Helix: restarting local node %s in %.0f s", name, delay)
        return None

    def restart_due(self) -> list[str]:
        """Start again the workers whose back-off is over; returns their names."""
        due = [n for n, at in self.restart_at.items() if time.monotonic() >= at]
        for name in due:
            del self.restart_at[name]
            self._launch(name, "a")
            logger.info("Helix: restarted local node %s (log: %s)", name, self.logs[name])
        return due

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join(self.logs[name].read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
