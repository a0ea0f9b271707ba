"""Addresses for a plan's nodes, and local workers started as subprocesses.

Nodes whose address is `local` get a free loopback port and are started by the coordinator as
`vllm-helix worker` subprocesses; the others are started by the user on their hosts. A resolved copy of
the plan (every address filled in) is what local workers read.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from vllm_helix.host import shared_host_env
from vllm_helix.node.config import WorkerConfig
from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.planner.plan import Plan, save_plan

LOCAL = "local"
logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    processes: dict[str, subprocess.Popen]
    logs: dict[str, Path]

    @classmethod
    def start(cls, plan: Plan, names: list[str], model: str, config: WorkerConfig) -> LocalNodes:
        workdir = Path(tempfile.mkdtemp(prefix="vllm-helix-"))
        plan_path = workdir / "plan.yaml"
        save_plan(plan, plan_path)
        env = shared_host_env()  # the local nodes share this host
        processes, logs = {}, {}
        for name in names:
            logs[name] = workdir / f"{name}.log"
            command = [sys.executable, "-m", "vllm_helix.cli", "worker", "--plan", str(plan_path), "--node", name,
                       "--model", model, *config.cli_args()]
            with open(logs[name], "w") as log:
                processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                   start_new_session=True)
        if names:
            logger.info("Helix: started local nodes %s (logs: %s/<node>.log)", ", ".join(names), workdir)
        return cls(processes, logs)

    def dead(self) -> dict[str, int]:
        """Workers that exited, with their exit status."""
        return {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}

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
