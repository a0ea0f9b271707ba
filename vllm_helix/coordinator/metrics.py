"""Prometheus metrics of a Helix cluster (`helix_*`) on `vllm serve`'s own /metrics.

Where they live: the coordinator runs in vLLM's engine-core process, but /metrics is served by the API
server process(es) from vLLM's prometheus registry (`get_prometheus_registry()`): prometheus_client's global
REGISTRY with one API server; with several (`--api-server-count`), a fresh registry per scrape whose
`MultiProcessCollector` reads every process's value files in PROMETHEUS_MULTIPROC_DIR. So the values cross
the way prometheus_client's multiprocess mode shares them: the engine core's `ClusterMetrics` writes its
gauges (`livemostrecent`) into one value file of that format every second and on every node report:
- several API servers: into vLLM's PROMETHEUS_MULTIPROC_DIR (set before the engine core starts, inherited),
  where vLLM's own collector finds them, whichever API server answers;
- one API server: into $HELIX_METRICS_DIR, which `expose()` — called when `--executor helix` is parsed,
  before the engine core starts, so the engine core inherits the folder — puts on the global REGISTRY
  with a MultiProcessCollector of its own.
No SchedulerStats field is borrowed, and the values stay fresh while the engine is idle (vLLM sends no
stats then).

Per node: up, layer range, busy ratio, tokens/s, batches, KV blocks used/total, payload bytes sent and
received, planned and measured throughput, whether it drifts (coordinator/drift.py) and the relative speed its
routing weight follows (coordinator/routing.py). Per cluster:
planned and live max flow, requests admitted per route, rerouted, failed, and admission waits.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from vllm_helix import wire as p
from vllm_helix.coordinator.drift import NodeDrift, Work
from vllm_helix.planner.plan import Plan

logger = logging.getLogger(__name__)
ENV = "HELIX_METRICS_DIR"  # not VLLM_*: vLLM warns about every VLLM_ variable it does not know
PUBLISH_INTERVAL_S = 1.0

# name -> help; every family is a gauge (counters are exported as their running totals)
NODE_FAMILIES = {
    "helix_node_up": "1 while the node serves, 0 once it is lost",
    "helix_node_layer_start": "first layer the node holds",
    "helix_node_layer_end": "one past the last layer the node holds",
    "helix_node_busy_ratio": "share of the last report interval the node spent running batches",
    "helix_node_tokens_per_second": "tokens the node ran per second over the last report interval",
    "helix_node_batches_total": "batches the node ran since it started",
    "helix_node_tokens_total": "tokens the node ran since it started",
    "helix_node_kv_blocks_used": "KV cache blocks in use on the node",
    "helix_node_kv_blocks_total": "KV cache blocks of the node",
    "helix_node_bytes_sent_total": "activation payload bytes the node sent",
    "helix_node_bytes_received_total": "activation payload bytes the node received",
    "helix_node_planned_tokens_per_second": "the node's throughput in the plan (tokens/s through its layers)",
    "helix_node_throughput_ratio": "measured throughput / planned, for the batches it ran (1 = as planned)",
    "helix_node_drifting": "1 while the node is more than 25 % off its planned throughput for a minute",
    "helix_node_routing_speed": "speed the node's routing weight follows, relative to the median node (1 = planned)",
    "helix_node_probe_ratio": "throughput / planned of the node's start-up probe (1 = as planned)",
}
CLUSTER_FAMILIES = {
    "helix_planned_max_flow_tokens_per_second": "max flow of the plan",
    "helix_live_max_flow_tokens_per_second": "max flow of the nodes still serving",
    "helix_requests_admitted_total": "requests admitted, per route",
    "helix_requests_rerouted_total": "requests moved to another route",
    "helix_requests_failed_total": "requests failed by a node or a lost node",
    "helix_admission_waits_total": "requests that waited for KV room on a route",
}


class _Node:
    def __init__(self, name: str):
        self.name = name
        self.up = True
        self.last: p.Busy | None = None
        self.last_at = 0.0
        self.busy_ratio = self.tokens_per_s = 0.0

    def report(self, busy: p.Busy, now: float) -> None:
        if self.last is not None and now > self.last_at:
            dt = now - self.last_at
            self.busy_ratio = min(1.0, max(0.0, (busy.busy_s - self.last.busy_s) / dt))
            self.tokens_per_s = max(0.0, (busy.tokens - self.last.tokens) / dt)
        self.last, self.last_at = busy, now


class ClusterMetrics:
    """The engine core's side: every event updates it; `publish()` writes the values for /metrics."""

    def __init__(self, plan: Plan, plan_path: str, model_path: str, folder: str | None = None,
                 follow_probes: bool = False):
        self.plan = plan
        self.follow_probes = follow_probes  # --helix-follow-probes: the routes follow the start-up probes too
        # several API servers (or a user's PROMETHEUS_MULTIPROC_DIR): vLLM's /metrics reads that folder
        self.folder = folder or os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get(ENV)
        self._file: GaugeFile | None = None
        self.nodes = {n: _Node(n) for n in plan.placement.ranges}
        self.plan_path, self.model_path = plan_path, model_path
        now = time.monotonic()
        self.drift = {n: NodeDrift(plan, n, plan_path, model_path, now) for n in plan.placement.ranges}
        self.live_max_flow = plan.flow.value
        self.routing_speed: dict[str, float] = {}
        self.admitted: dict[str, int] = {}
        self.rerouted = self.failed = 0
        self._waited: set[str] = set()
        self._lock = threading.Lock()
        self._published = 0.0

    # ------------------------------------------------------------------ events (one call per event)

    def on_busy(self, busy: p.Busy, now: float | None = None) -> None:
        """A node's report, received at `now` (monotonic seconds; default: now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            node = self.nodes.get(busy.node)
            if node is None:
                return
            node.report(busy, now)
            self.drift[busy.node].update(now, Work.of(busy))
        self.publish()

    def on_calibration(self, node: str, probe: p.Calibration | None) -> None:
        """A node's start-up probe, from its Hello (at start-up or when it rejoins)."""
        if probe is None:
            return
        with self._lock:
            if node in self.drift:
                self.drift[node].calibrate(probe)

    def routing_ratios(self, now: float) -> dict[str, float]:
        """The nodes' throughput / planned that the routes follow (`NodeDrift.routing_ratio`)."""
        with self._lock:
            ratios = {n: d.routing_ratio(now, self.follow_probes) for n, d in self.drift.items()}
        return {n: r for n, r in ratios.items() if r is not None}

    def last_reports(self) -> dict[str, float]:
        """When each node's latest report arrived (monotonic seconds), for the nodes that reported."""
        with self._lock:
            return {n: node.last_at for n, node in self.nodes.items() if node.last is not None}

    def on_admit(self, request_id: str, route: Iterable[str]) -> None:
        key = ">".join(route)
        with self._lock:
            self.admitted[key] = self.admitted.get(key, 0) + 1

    def on_wait(self, request_id: str) -> None:
        with self._lock:
            self._waited.add(request_id)

    def on_failed(self, count: int) -> None:
        with self._lock:
            self.failed += count

    def on_rerouted(self, count: int) -> None:
        with self._lock:
            self.rerouted += count

    def on_node_lost(self, node: str) -> None:
        with self._lock:
            if node in self.nodes:
                self.nodes[node].up = False
                # restarted or stalled, what it was measured at says nothing about how it comes back
                self.drift[node] = NodeDrift(self.plan, node, self.plan_path, self.model_path, time.monotonic())
        self.publish()

    def set_routing(self, live_max_flow: float, speed: dict[str, float]) -> None:
        """The router was re-weighed: the live max flow, and the relative speeds it follows (none: as planned)."""
        with self._lock:
            self.live_max_flow, self.routing_speed = live_max_flow, dict(speed)

    # ------------------------------------------------------------------ the snapshot

    def tick(self) -> None:
        """Called often (the receive loop): publish at most every PUBLISH_INTERVAL_S."""
        if time.monotonic() - self._published >= PUBLISH_INTERVAL_S:
            self.publish()

    def families(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        out: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in (*NODE_FAMILIES, *CLUSTER_FAMILIES)}
        with self._lock:
            for name, node in self.nodes.items():
                rng, last, drift = self.plan.placement.ranges[name], node.last, self.drift[name]
                values = {
                    "helix_node_up": float(node.up), "helix_node_layer_start": rng.start,
                    "helix_node_layer_end": rng.end, "helix_node_busy_ratio": node.busy_ratio,
                    "helix_node_tokens_per_second": node.tokens_per_s,
                    "helix_node_batches_total": last.batches if last else 0,
                    "helix_node_tokens_total": last.tokens if last else 0,
                    "helix_node_kv_blocks_used": last.kv_used_blocks if last else 0,
                    "helix_node_kv_blocks_total": last.kv_total_blocks if last else 0,
                    "helix_node_bytes_sent_total": last.bytes_sent if last else 0,
                    "helix_node_bytes_received_total": last.bytes_received if last else 0,
                    "helix_node_planned_tokens_per_second": self.plan.flow.node_capacity.get(name, 0.0),
                    "helix_node_drifting": float(drift.drifting),
                    "helix_node_routing_speed": self.routing_speed.get(name, 1.0),
                }
                if drift.ratio is not None:
                    values["helix_node_throughput_ratio"] = drift.ratio
                if drift.calibrated is not None:
                    values["helix_node_probe_ratio"] = drift.calibrated
                for family, value in values.items():
                    out[family].append(({"node": name}, float(value)))
            out["helix_planned_max_flow_tokens_per_second"].append(({}, self.plan.flow.value))
            out["helix_live_max_flow_tokens_per_second"].append(({}, self.live_max_flow))
            out["helix_requests_admitted_total"] += [({"route": r}, float(n)) for r, n in sorted(self.admitted.items())]
            out["helix_requests_rerouted_total"].append(({}, float(self.rerouted)))
            out["helix_requests_failed_total"].append(({}, float(self.failed)))
            out["helix_admission_waits_total"].append(({}, float(len(self._waited))))
        return out

    def publish(self) -> None:
        self._published = time.monotonic()
        if not self.folder:
            return
        try:
            if self._file is None:
                self._file = GaugeFile(self.folder)
            self._file.write(self.families())
        except OSError as exc:  # metrics must never stop serving
            logger.warning("cannot write Helix metrics to %s: %s", self.folder, exc)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class GaugeFile:
    """This process's prometheus_client multiprocess value file of `livemostrecent` gauges (the format a
    MultiProcessCollector reads; `live`: removed when the process is marked dead)."""

    def __init__(self, folder: str):
        from prometheus_client.mmap_dict import MmapedDict

        Path(folder).mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._dict = MmapedDict(str(Path(folder) / f"gauge_livemostrecent_{os.getpid()}.db"))

    def write(self, families: dict[str, list[tuple[dict[str, str], float]]]) -> None:
        from prometheus_client.mmap_dict import mmap_key

        now = time.time()  # mostrecent: the newest timestamp wins
        helps = {**NODE_FAMILIES, **CLUSTER_FAMILIES}
        for name, samples in families.items():
            for labels, value in samples:
                key = mmap_key(name, name, list(labels), list(labels.values()), helps[name])
                self._dict.write_value(key, value, now)

    def close(self) -> None:
        from prometheus_client import multiprocess

        self._dict.close()
        multiprocess.mark_process_dead(os.getpid(), self.folder)


def forget_dead_processes(folder: str) -> None:
    """Value files of processes that are gone (an engine core killed before it could remove its file)."""
    from prometheus_client import multiprocess

    for path in Path(folder).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if not _alive(pid):
            multiprocess.mark_process_dead(int(pid), folder)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


_exposed: str | None = None


def expose() -> None:
    """In the API server process, when `--executor helix` is parsed: pick the value folder (inherited by the
    engine core started later) and put a collector over it on the global REGISTRY, what /metrics serves with
    one API server. Idempotent."""
    global _exposed
    if _exposed is not None:
        return
    folder = os.environ.get(ENV)
    if folder is None:
        folder = tempfile.mkdtemp(prefix="vllm-helix-metrics-")
        os.environ[ENV] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    Path(folder).mkdir(parents=True, exist_ok=True)
    forget_dead_processes(folder)
    from prometheus_client import REGISTRY, multiprocess

    multiprocess.MultiProcessCollector(REGISTRY, path=folder)  # several API servers: unused, vLLM reads its own
    _exposed = folder
