"""Run one simulation: `simulate(plan, SimConfig(...)) -> SimReport` (the CLI's `vllm-helix simulate`).

`reference_s1_setup()` builds the reference's published example (spec §8.3 S1: LLaMA-2-70B on single24,
ILP layout, its simulator cluster's link order and KV capacities); `SimConfig.reference_s1()` its settings.
"""

from __future__ import annotations

import heapq
import math
import random
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vllm_helix.errors import ClusterSpecError, InfeasiblePlacement
from vllm_helix.planner.cluster import COORDINATOR, ClusterSpec
from vllm_helix.planner.flow import max_flow
from vllm_helix.planner.kv_expectation import IMPROVED_KV, OFFLINE_KV, ONLINE_KV, KVParams
from vllm_helix.planner.plan import Plan
from vllm_helix.planner.profiles import profile_for
from vllm_helix.planner.router import ROUTERS, ShortestQueueRouter, SwarmRouter, default_kv_capacity, prompt_limits
from vllm_helix.sim.batching import EngineLimits
from vllm_helix.sim.coordinator import Coordinator, named_rng
from vllm_helix.sim.cpu import SharedCpu
from vllm_helix.sim.link import Link
from vllm_helix.sim.loop import EventLoop
from vllm_helix.sim.metrics import Metrics, cdf, latency_stats
from vllm_helix.sim.node import ComputeNode
from vllm_helix.sim.workload import MAX_REQUESTS, Arrival, LengthSampler, generate_trace, load_trace

MODES = ("online", "offline")


MAX_DURATION_S = 86_400.0  # one simulated day per window: an offline run that long takes ~20 min already
# SimConfig's numbers (None: the default): (what it must exceed, or ">=" this, at most this)
_BOUNDS: dict[str, tuple[str, float, float]] = {
    "duration_s": (">=", 1.0, MAX_DURATION_S), "warmup_s": (">=", 0.0, MAX_DURATION_S),
    "token_rate": (">", 0.0, math.inf), "initial_queries": (">", 0, MAX_REQUESTS), "feed_hwm": (">", 0.0, math.inf),
    "disk_bytes_per_s": (">", 0.0, math.inf), "sample_interval_s": (">=", 0.01, MAX_DURATION_S),
    "max_time_s": (">", 0.0, math.inf),
}
_OPTIONS = {"duration_s": "--duration", "token_rate": "--rate", "initial_queries": "--initial-queries"}


def _check_number(name: str, value: Any, bound: tuple[str, float, float]) -> None:
    op, low, high = bound
    flag = f" ({_OPTIONS[name]})" if name in _OPTIONS else ""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ClusterSpecError(f"{name} must be a finite number, got {value!r}{flag}")
    if value < low or (op == ">" and value == low):
        raise ClusterSpecError(f"{name} must be {op} {low:g}, got {value}{flag}")
    if value > high:
        what = "requests per run" if name == "initial_queries" else "s (one simulated day)"
        raise ClusterSpecError(f"{name} must be at most {high:g} {what}, got {value}{flag}")


@dataclass(frozen=True, slots=True)
class SimConfig:
    mode: str = "offline"  # "offline": keep the cluster full; "online": trace arrivals
    scheduler: str = "maxflow"  # maxflow | swarm | random | shortest-queue
    improved: bool = False  # improved MaxFlow scheduling (see planner/router.py)
    reference_compat: bool = False  # keep the reference simulator's modelling quirks (spec §9 item 12)
    seed: int = 0
    duration_s: float | None = None  # measured window; default 600 offline, 1800 online
    warmup_s: float | None = None  # default 60 offline, 0 online
    token_rate: float | None = None  # online target tokens/s; default 50 % of the plan's max flow
    trace: str | tuple[Arrival, ...] | None = None  # online: a CSV/JSONL path or arrivals (else generated)
    dataset: str = "azure_conv"  # length dataset for generated traces and the offline feeder
    initial_queries: int | None = None  # offline: 20 for maxflow, 240 for the baselines (reference)
    feed_hwm: float | None = None  # offline maxflow feeder: launch while expected KV bottleneck <= this
    #   (default 0.8, 0.9 improved)
    kv_params: KVParams | None = None  # default (0.85, 1.0) offline, (0.9, 0.6) online, (0.95, 1.0) improved
    disk_bytes_per_s: float = 1e9  # model loading speed; t0 = ceil(max load time) + 1
    sample_interval_s: float = 10.0  # series resolution (throughput, utilization, KV usage)
    max_time_s: float = 1e6  # online: give up draining after this much simulated time
    progress: bool = False  # rich progress bar with live status
    engine: EngineLimits | None = None  # batch as a vllm-helix server does (sim/batching.py); None: at the nodes

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ClusterSpecError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.scheduler not in ROUTERS:
            raise ClusterSpecError(f"scheduler must be one of {tuple(ROUTERS)}, got {self.scheduler!r}")
        for name in ("seed", "initial_queries"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ClusterSpecError(f"{name} must be an integer, got {value!r}")
        for name, bound in _BOUNDS.items():
            _check_number(name, getattr(self, name), bound)

    @classmethod
    def improved_s1(cls, **overrides: Any) -> SimConfig:
        """S1 with the improved MaxFlow scheduling (same node model and quirks, for a fair comparison)."""
        return replace(cls.reference_s1(improved=True, kv_params=None, feed_hwm=None), **overrides)

    @classmethod
    def reference_s1(cls, **overrides: Any) -> SimConfig:
        """Spec §8.1 offline MaxFlow settings, reference quirks on (reproduces S1)."""
        return replace(cls(mode="offline", scheduler="maxflow", reference_compat=True, duration_s=600,
                           warmup_s=60, initial_queries=20, feed_hwm=0.8, kv_params=OFFLINE_KV), **overrides)


@dataclass(slots=True)
class SimReport:
    config: dict[str, Any]
    max_flow: float
    window_s: tuple[float, float]
    decode_throughput: float
    total_throughput: float
    ratio_to_max_flow: float
    reference_total_throughput: float
    last_finish_s: float
    prompt_latency: dict[str, float]
    decode_latency: dict[str, float]
    queries: dict[str, int]
    nodes: dict[str, dict[str, float]]
    series: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        p, d = self.prompt_latency, self.decode_latency
        lo, hi = self.window_s
        overflows = sum(int(n["kv_overflows"]) for n in self.nodes.values())
        return "\n".join([
            f"window {lo:.0f}-{hi:.0f} s  scheduler {self.config['scheduler']}"
            f"{' (improved)' if self.config['improved'] else ''}  mode {self.config['mode']}"
            f"{'  reference-compat' if self.config['reference_compat'] else ''}",
            f"decode throughput  {self.decode_throughput:9.1f} tok/s",
            f"total throughput   {self.total_throughput:9.1f} tok/s  ({100 * self.ratio_to_max_flow:.1f} % of "
            f"max flow {self.max_flow:.1f})",
            f"reference 'total time usage': {self.last_finish_s:.2f} s ({self.reference_total_throughput:.2f} tok/s)",
            f"prompt latency  mean {p['mean']:.3f}  p50 {p['p50']:.3f}  p95 {p['p95']:.3f}  p99 {p['p99']:.3f} s",
            f"decode latency  mean {d['mean']:.3f}  p50 {d['p50']:.3f}  p95 {d['p95']:.3f}  p99 {d['p99']:.3f} s",
            f"queries {self.queries}  KV overflows {overflows}",
            f"cost {self.cost.get('wall_s', 0):.1f} s wall, {self.cost.get('cpu_s', 0):.1f} s CPU, "
            f"{self.cost.get('events', 0):.0f} events",
        ])


# ---------------------------------------------------------------------------------------- setup


def reference_s1_setup() -> tuple[Plan, dict[str, int]]:
    """The reference's examples/simulation ILP run: plan (simulator cluster, link order, preflow-push
    weights on raw floats) and the simulator cluster's per-node KV capacities."""
    from vllm_helix.planner.examples import reference_dir
    from vllm_helix.planner.ini import read_simulator_cluster_ini, read_solution_ini
    from vllm_helix.planner.model import BUILTIN_MODELS

    layout = reference_dir() / "layouts" / "ilp"
    sim = read_simulator_cluster_ini(layout / "simulator_cluster.ini")
    placement = read_solution_ini(layout / "ilp_sol.ini", sim.cluster)
    model = BUILTIN_MODELS["llama2-70b"]
    flow = max_flow(sim.cluster, model, placement, link_order=sim.link_order, scale=None)
    return Plan(sim.cluster, model, placement, flow, "ilp"), dict(sim.kv_slots)


def check_plan(plan: Plan, cluster: ClusterSpec | None = None) -> None:
    """Raise ClusterSpecError if the plan does not fit `cluster` (or its own cluster)."""
    cluster = cluster or plan.cluster
    for name, rng in plan.placement.ranges.items():
        if name not in cluster.node_names:
            raise ClusterSpecError(f"plan places layers {rng} on node {name!r}, which the cluster does not have "
                                   f"(cluster nodes: {', '.join(cluster.node_names[:8])}...); was the plan made "
                                   f"for another cluster?")
        if cluster.node(name).gpu_type != plan.cluster.node(name).gpu_type:
            raise ClusterSpecError(f"plan node {name!r} is a {plan.cluster.node(name).gpu_type} but the cluster "
                                   f"says {cluster.node(name).gpu_type}; re-plan for this cluster")
    if plan.flow.value <= 0 or not plan.flow.arc_flow:
        raise InfeasiblePlacement("the plan has no route through every layer (max flow 0); re-plan")


def _entry_layers(plan: Plan) -> dict[str, set[int]]:
    entries: dict[str, set[int]] = {n: set() for n in plan.placement.ranges}
    for src, dst in plan.flow.arc_flow:
        if dst != COORDINATOR:
            start = plan.placement[dst].start
            if src != COORDINATOR:
                start = max(start, plan.placement[src].end)
            entries[dst].add(start)
    return entries


def _build(plan: Plan, config: SimConfig, kv_capacity: dict[str, int], loop: EventLoop):
    model, cluster = plan.model, plan.cluster
    nodes = {}
    entries = _entry_layers(plan)
    hosts = {host: SharedCpu(loop, cores) for host, cores in cluster.host_cores}
    for name, rng in plan.placement.ranges.items():
        node = cluster.node(name)
        profile = profile_for(model, node.gpu_type)
        cpu = hosts.get(node.host)
        if cpu is None and node.cpu_quota is not None:
            cpu = SharedCpu(loop)  # a host of its own, under its quota
        nodes[name] = ComputeNode(name, rng, profile, kv_capacity[name], loop, entries[name],
                                  activation_bytes=model.activation_bytes_per_token,
                                  reference_compat=config.reference_compat, cpu=cpu, cpu_quota=node.cpu_quota,
                                  samples=rng.end == model.num_layers)
    links = {}
    for src, dst in plan.flow.arc_flow:
        spec = cluster.link(src, dst)
        coordinator_hop = COORDINATOR in (src, dst)
        per_token = model.token_bytes if coordinator_hop else model.token_bytes + model.activation_bytes_per_token
        links[(src, dst)] = Link(src, dst, spec.latency_s, per_token)
    return nodes, links


def _router(plan: Plan, config: SimConfig, kv_capacity: dict[str, int], nodes: dict[str, ComputeNode]):
    kv_params = config.kv_params or (IMPROVED_KV if config.improved else
                                     OFFLINE_KV if config.mode == "offline" else ONLINE_KV)
    rng = named_rng(config.seed, "router")
    cls = ROUTERS[config.scheduler]
    kwargs: dict[str, Any] = {"rng": rng}
    if config.scheduler == "maxflow":
        kwargs.update(kv_params=kv_params, improved=config.improved)
    if cls is ShortestQueueRouter:
        kwargs["queue_length"] = lambda n: len(nodes[n].queues[nodes[n].start])
    router = cls.from_plan(plan, kv_capacity, **kwargs)
    if isinstance(router, SwarmRouter):
        for name, node in nodes.items():
            node.on_hop_time = (lambda dst: lambda src, s: router.on_hop_time(src, dst, s))(name)
    return router


# ---------------------------------------------------------------------------------------- run


def simulate(plan: Plan, config: SimConfig | None = None, kv_capacity: dict[str, int] | None = None,
             cluster: ClusterSpec | None = None) -> SimReport:
    """Simulate serving `plan` under `config`. Raises ClusterSpecError/InfeasiblePlacement on bad input."""
    config = config or SimConfig()
    check_plan(plan, cluster)
    kv_capacity = kv_capacity or default_kv_capacity(plan.cluster, plan.model, plan.placement)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    loop = EventLoop()
    t0 = math.ceil(max(r.size for r in plan.placement.ranges.values()) * plan.model.layer_bytes
                   / config.disk_bytes_per_s) + 1
    offline = config.mode == "offline"
    warmup = config.warmup_s if config.warmup_s is not None else (60.0 if offline else 0.0)
    duration = config.duration_s or (600.0 if offline else 1800.0)
    window = (t0 + warmup, t0 + warmup + duration)
    loop.now = t0
    metrics = Metrics(*window, config.sample_interval_s)
    nodes, links = _build(plan, config, kv_capacity, loop)
    router = _router(plan, config, kv_capacity, nodes)
    # reference_compat: the reference seeds the global random with `seed` before sampling offline lengths
    length_rng = random.Random(config.seed) if config.reference_compat else named_rng(config.seed, "lengths")
    lengths = LengthSampler(config.dataset, length_rng)
    feed_hwm = config.feed_hwm or (0.9 if config.improved else 0.8)
    coord = Coordinator(loop, router, nodes, links, metrics, offline=offline, feed_until=window[1],
                        feed_hwm=feed_hwm, lengths=lengths if offline else None,
                        reference_compat=config.reference_compat, own_lengths=config.improved, engine=config.engine)
    expected = None
    if offline:
        initial = config.initial_queries or (20 if config.scheduler == "maxflow" else 240)
        coord.feed_initial(initial, t0)
    else:
        trace = _online_trace(plan, config, t0, duration, _request_check(plan, kv_capacity, config.max_time_s - t0))
        for arrival in trace:
            coord.submit(arrival)
        expected = len(trace)
    sampler = _Sampler(loop, nodes, config.sample_interval_s)
    until = window[1] if offline else config.max_time_s
    _run_with_progress(loop, coord, sampler, until, window, config.progress, expected)
    cost = {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0, "events": loop.handled,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return _report(plan, config, metrics, coord, nodes, sampler, window, cost)


def _online_trace(plan: Plan, config: SimConfig, t0: float, duration: float,
                  check: Callable[[Arrival], str | None]) -> list[Arrival]:
    if isinstance(config.trace, (str, Path)):
        return [replace(a, time_s=a.time_s + t0) for a in load_trace(config.trace, check)]
    if config.trace is not None:
        if len(config.trace) > MAX_REQUESTS:
            raise ClusterSpecError(f"trace: {len(config.trace)} requests; a run takes at most {MAX_REQUESTS}")
        for i, arrival in enumerate(config.trace):
            if problem := check(arrival):
                raise ClusterSpecError(f"trace[{i}]: {problem}")
        return [replace(a, time_s=a.time_s + t0) for a in config.trace]
    rate = config.token_rate or 0.5 * plan.flow.value
    return generate_trace(rate, int(duration) - int(duration) % 3 or 3, t0, config.seed, config.dataset)


def _request_check(plan: Plan, kv_capacity: dict[str, int], latest_s: float) -> Callable[[Arrival], str | None]:
    """What is wrong with a trace request for this plan, or None: one that arrives after the run ends or
    that no route can ever take (it would wait forever, or decode for hours into a KV cache it overflows)."""
    context = plan.model.max_context
    max_prompt = prompt_limits(plan.cluster, plan.model, plan.placement)
    longest_prompt = _widest_route(plan, lambda node, layers: max_prompt[node])
    most_tokens = _widest_route(plan, lambda node, layers: kv_capacity[node] // layers)

    def check(a: Arrival) -> str | None:
        total = a.input_tokens + a.output_tokens
        if a.time_s > latest_s:
            return f"arrives at {a.time_s:g} s, after the simulation ends (max_time_s, {latest_s:g} s after start)"
        if context is not None and total > context:
            return f"input + output tokens {total} exceed the model's context of {context}"
        if a.input_tokens > longest_prompt:
            return f"input_tokens {a.input_tokens}: no route takes a prompt that long (at most {longest_prompt})"
        if total > most_tokens:
            return (f"input + output tokens {total}: more than the KV cache of any route can ever hold "
                    f"(at most {most_tokens})")
        return None

    return check


def _widest_route(plan: Plan, capacity: Callable[[str, int], float]) -> float:
    """The most a route (coordinator -> nodes -> coordinator on the plan's arcs) can take, a node taking
    `capacity(node, layers it runs there)`: the widest path, by Dijkstra with min for + and max for min."""
    out: dict[str, list[str]] = {}
    for src, dst in plan.flow.arc_flow:
        out.setdefault(src, []).append(dst)
    ranges = plan.placement.ranges
    best: dict[str, float] = {COORDINATOR: math.inf}
    heap, done, widest = [(-math.inf, COORDINATOR)], set(), 0.0
    while heap:
        width, node = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        for nxt in out.get(node, []):
            if nxt == COORDINATOR:
                widest = max(widest, -width)
                continue
            start = ranges[nxt].start if node == COORDINATOR else max(ranges[nxt].start, ranges[node].end)
            if ranges[nxt].end <= start:
                continue
            w = min(-width, capacity(nxt, ranges[nxt].end - start))
            if w > best.get(nxt, -1):
                best[nxt] = w
                heapq.heappush(heap, (-w, nxt))
    return widest


class _Sampler:
    """Every interval: per-node utilization and KV usage (kept as compact lists)."""

    def __init__(self, loop: EventLoop, nodes: dict[str, ComputeNode], interval: float):
        self.loop, self.nodes, self.interval = loop, nodes, interval
        self.times: list[float] = []
        self.util: dict[str, list[float]] = {n: [] for n in nodes}
        self.kv: dict[str, list[float]] = {n: [] for n in nodes}
        self._busy = {n: 0.0 for n in nodes}

    def start(self) -> None:
        self.loop.at(self.loop.now + self.interval, self.sample)

    def sample(self, _=None) -> None:
        self.loop.at(self.loop.now + self.interval, self.sample)
        self.times.append(self.loop.now)
        for name, node in self.nodes.items():
            self.util[name].append(min(1.0, (node.busy_s - self._busy[name]) / self.interval))
            self._busy[name] = node.busy_s
            self.kv[name].append(node.kv.usage)


def _run_with_progress(loop: EventLoop, coord: Coordinator, sampler: _Sampler, until: float,
                       window: tuple[float, float], progress: bool, expected: int | None) -> None:
    """Run in sample-interval slices (for the live status); online runs stop once every query is done."""
    sampler.start()
    bar = task = None
    if progress:
        from rich.progress import Progress
        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("simulating", total=window[1])
    try:
        target = loop.now
        while target < until:
            target = min(target + sampler.interval, until)
            loop.run(target)
            if bar is not None and task is not None:
                bar.update(task, completed=min(loop.now, window[1]), description=(
                    f"t={loop.now:7.1f}s  active={coord.active}  finished={coord.finished}"))
            if expected is not None and coord.finished + coord.rejected >= expected:
                break
            if loop.pending <= 1 and coord.active == 0:
                break
    finally:
        if bar is not None:
            bar.stop()


def _report(plan, config, metrics, coord, nodes, sampler, window, cost) -> SimReport:
    duration = window[1] - window[0]
    total = metrics.tokens_in_window / duration
    node_stats = {}
    for name, node in nodes.items():
        utils = [u for t, u in zip(sampler.times, sampler.util[name], strict=False) if window[0] < t <= window[1]]
        node_stats[name] = {"layers": f"{node.start}-{node.end}", "utilization": sum(utils) / len(utils) if utils
                            else 0.0, "kv_peak_usage": node.kv.peak / node.kv.capacity if node.kv.capacity else 0.0,
                            "kv_overflows": node.kv.overflows, "batches": node.batches}
    p_x, p_y = cdf(metrics.prompt_latency)
    d_x, d_y = cdf(metrics.decode_latency)
    series = {"throughput": metrics.throughput_series(), "sample_time_s": sampler.times,
              "utilization": sampler.util, "kv_usage": sampler.kv,
              "prompt_latency_cdf": {"seconds": p_x, "fraction": p_y},
              "decode_latency_cdf": {"seconds": d_x, "fraction": d_y}}
    cfg = {k: getattr(config, k) for k in ("mode", "scheduler", "improved", "reference_compat", "seed",
                                            "token_rate", "initial_queries", "feed_hwm")}
    cfg["engine"] = asdict(config.engine) if config.engine is not None else None
    cfg["trace"] = config.trace if isinstance(config.trace, (str, type(None))) else f"{len(config.trace)} arrivals"
    return SimReport(
        config=cfg, max_flow=plan.flow.value, window_s=window,
        decode_throughput=metrics.decode_in_window / duration, total_throughput=total,
        ratio_to_max_flow=total / plan.flow.value,
        reference_total_throughput=metrics.all_tokens / metrics.last_finish if metrics.last_finish else 0.0,
        last_finish_s=metrics.last_finish,
        prompt_latency=latency_stats(metrics.prompt_latency), decode_latency=latency_stats(metrics.decode_latency),
        queries={"issued": coord.issued, "finished": coord.finished, "rejected": coord.rejected,
                 "deferred": coord.deferred, "active_at_end": coord.active, "waiting_at_end": len(coord.waiting)},
        nodes=node_stats, series=series, cost=cost,
    )
