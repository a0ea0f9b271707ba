"""The `--helix-*` options of `vllm serve`, in one table (no vLLM imports here).

The plugin adds them to vLLM's parser; their values travel to the engine-core process inside
`VllmConfig.additional_config["helix"]`, which the executor and scheduler read with `helix_options()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXECUTOR_CLASS = "vllm_helix.executor.helix_executor.HelixExecutor"
SCHEDULER_CLASS = "vllm_helix.executor.scheduler.HelixScheduler"
CONFIG_KEY = "helix"


@dataclass(frozen=True, slots=True)
class Option:
    flag: str
    key: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None


OPTIONS = (
    Option("--helix-plan", "plan", str, None, "plan YAML from `vllm-helix plan` (nodes, layers, addresses, flows)"),
    Option("--helix-router", "router", str, "maxflow", "per-request route choice",
           ("maxflow", "random", "shortest-queue", "swarm")),
    Option("--helix-depth", "depth", int, 0,
           "batches in flight through the cluster; 0 = one per node of the plan"),
    Option("--helix-start-timeout", "start_timeout_s", float, 600.0,
           "seconds to wait for every worker of the plan to come up"),
    Option("--helix-step-timeout", "step_timeout_s", float, 120.0,
           "seconds a batch may take through the cluster before its requests fail"),
    Option("--helix-kv-fraction", "kv_fraction", float, 0.05,
           "fraction of each local worker's free memory for its KV cache (local nodes only)"),
    Option("--helix-route-log", "route_log", str, None, "append each request's route to this file"),
    Option("--helix-key", "key", str, None,
           "the coordinator's CURVE secret key file (default: <plan>.coordinator.key beside the plan)"),
    Option("--helix-insecure", "insecure", bool, False,
           "plain TCP on non-loopback addresses: no encryption, no authentication (logs a warning)"),
)


def helix_options(additional_config: Any) -> dict[str, Any]:
    """The helix options with defaults filled in, from `VllmConfig.additional_config`."""
    given = (additional_config or {}).get(CONFIG_KEY, {}) if isinstance(additional_config, dict) else {}
    return {opt.key: given.get(opt.key, opt.default) for opt in OPTIONS} | {"enabled": bool(given.get("enabled"))}


def pipeline_depth(options: dict[str, Any]) -> int:
    """Batches to keep in flight: --helix-depth, or one per node of the plan (each node can be busy with one
    while the others are; batches of different routes then run side by side)."""
    if options["depth"] > 0:
        return options["depth"]
    if not options["plan"]:
        return 1
    from vllm_helix.planner.plan import load_plan

    return max(1, len(load_plan(options["plan"]).placement.ranges))
