"""Who starts a plan's nodes (`--helix-launcher`): the coordinator asks its launcher for the plan with every
address filled in, the nodes it starts, and then starts them; the workers object it gets back
(LocalNodes, RayNodes) says which died, shows their logs and stops them."""

from __future__ import annotations

from typing import Any, Protocol

from vllm_helix.coordinator.local_nodes import LocalNodes, local_nodes, resolve_addresses
from vllm_helix.node.config import WorkerConfig
from vllm_helix.planner.plan import Plan


class Launcher(Protocol):
    def resolve_addresses(self, plan: Plan) -> Plan: ...

    def names(self, plan: Plan) -> list[str]: ...

    def start(self, plan: Plan, names: list[str], model: str, config: WorkerConfig,
              key_files: dict[str, str] | None = None) -> Any: ...


class LocalLauncher:
    """`local` nodes as subprocesses of the server on free loopback ports; the others are started by hand."""

    def resolve_addresses(self, plan: Plan) -> Plan:
        return resolve_addresses(plan)

    def names(self, plan: Plan) -> list[str]:
        return local_nodes(plan)

    def start(self, plan: Plan, names: list[str], model: str, config: WorkerConfig,
              key_files: dict[str, str] | None = None) -> LocalNodes:
        return LocalNodes.start(plan, names, model, config, key_files)


def launcher_for(name: str) -> Launcher:
    if name == "ray":
        from vllm_helix.coordinator.ray_nodes import RayNodes  # Ray is an optional extra

        return RayNodes()
    return LocalLauncher()
