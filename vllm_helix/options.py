"""The `--helix-*` options of `vllm serve`, in one table (no vLLM imports here).

The plugin adds them to vLLM's parser; their values travel to the engine-core process inside
`VllmConfig.additional_config["helix"]`, which the executor and scheduler read with `helix_options()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vllm_helix.node.config import WorkerConfig

EXECUTOR_CLASS = "vllm_helix.coordinator.executor.HelixExecutor"
SCHEDULER_CLASS = "vllm_helix.coordinator.scheduler.HelixScheduler"
CONFIG_KEY = "helix"


@dataclass(frozen=True, slots=True)
class Option:
    flag: str
    key: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    problem: Callable[[Any], str | None] = lambda value: None  # what is wrong with a value, or None


def _fraction(value: float) -> str | None:
    return None if 0 < value < 1 else "must be in (0, 1)"


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _not_negative(value: int) -> str | None:
    return None if value >= 0 else "must be >= 0"


_NODE = WorkerConfig()  # local nodes' defaults are the nodes' own


OPTIONS = (
    Option("--helix-plan", "plan", str, None, "plan YAML from `vllm-helix plan` (nodes, layers, addresses, flows)"),
    Option("--helix-cluster", "cluster", str, None,
           "cluster YAML instead of --helix-plan: plan it at start-up, write CLUSTER.plan.yaml beside it, serve it"),
    Option("--helix-throughput", "throughput", str, "auto",
           "node throughput model for --helix-cluster: auto picks the reference tables for the built-in models, "
           "the measured profiles where they cover the GPUs, else the roofline estimate",
           ("auto", "reference", "profile", "estimate")),
    Option("--helix-plan-time-limit", "plan_time_limit_s", float, 20.0,
           "seconds the placement solver may take at start-up (--helix-cluster)", problem=_positive),
    Option("--helix-launcher", "launcher", str, "local",
           "who starts the plan's nodes: local = its `local` nodes as subprocesses of this server (the others by "
           "hand); ray = every node as a Ray actor on the running Ray cluster (pip install 'vllm-helix[ray]')",
           ("local", "ray")),
    Option("--helix-router", "router", str, "maxflow", "per-request route choice",
           ("maxflow", "random", "shortest-queue", "swarm")),
    Option("--helix-static-weights", "static_weights", bool, False,
           "route by the plan's flows only; by default a node planned from a profile and measured slower "
           "(faster) than its plan gets fewer (more) new requests"),
    Option("--helix-follow-probes", "follow_probes", bool, False,
           "also weigh routes by the nodes' start-up probes, before the first request, and follow the measured "
           "speed of nodes without a profile (priced by their probe); for nodes on hosts of their own"),
    Option("--helix-depth", "depth", int, 0,
           "batches in flight through the cluster; 0 = one per node of the plan", problem=_not_negative),
    Option("--helix-async", "async", bool, False,
           "async scheduling: each request's next decode step is scheduled and sent before its token comes back, "
           "and each route's last node hands the token straight to its first node (the coordinator off the "
           "chain's critical path); one more batch in flight"),
    Option("--helix-start-timeout", "start_timeout_s", float, _NODE.start_timeout_s,
           "seconds to wait for every worker of the plan to come up", problem=_positive),
    Option("--helix-step-timeout", "step_timeout_s", float, 120.0,
           "seconds a batch may take through the cluster before its requests are recomputed on another route "
           "(the first node on its route silent that long is lost)",
           problem=_positive),
    Option("--helix-reroute-timeout", "reroute_timeout_s", float, 60.0,
           "seconds a request waits for a complete route when lost nodes left none, before it fails",
           problem=_positive),
    Option("--helix-kv-fraction", "kv_fraction", float, _NODE.kv_fraction,
           "fraction of each local worker's free memory for its KV cache (local nodes only)", problem=_fraction),
    Option("--helix-kv-cache-bytes", "kv_cache_bytes", int, _NODE.kv_cache_bytes,
           "KV cache bytes of each local worker, instead of --helix-kv-fraction (local nodes only)",
           problem=_positive),
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


def batches_in_flight(options: dict[str, Any]) -> int:
    """What EngineCore keeps in flight: the pipeline depth, and under --helix-async one more batch, sent ahead of
    the tokens it decodes (as vLLM's own async scheduling keeps one more)."""
    return pipeline_depth(options) + (1 if options["async"] else 0)


def pipeline_depth(options: dict[str, Any]) -> int:
    """Batches to keep in flight: --helix-depth, or one per node of the plan (each node can be busy with one
    while the others are; batches of different routes then run side by side)."""
    if options["depth"] > 0:
        return options["depth"]
    if not options["plan"]:
        return 1
    from vllm_helix.planner.files import load_plan

    return max(1, len(load_plan(options["plan"]).placement.ranges))
