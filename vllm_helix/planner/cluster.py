"""Cluster description: compute nodes, network links and the coordinator, read from YAML.

All quantities are stored in SI base units (bytes, bytes/s, seconds); the YAML carries explicit units
(`10Gbps`, `1.25GB/s`, `40GB`, `1ms`). Example::

    coordinator: {address: local, nic_in: 10GB/s, nic_out: 10GB/s}
    nodes:
      - {name: a100-0, gpu: A100, vram: 40GB, nic_in: 10GB/s, nic_out: 10GB/s, region: us, address: local}
      - {name: l4-0, gpu: L4, gpus: 2, vram: 48GB, region: eu, address: 10.0.0.7:6100}  # vLLM TP over both
    links:
      - {between: [a100-0, l4-0], bandwidth: 1Gbps, latency: 40ms}     # both directions
      - {from: coordinator, to: a100-0, bandwidth: 10Gbps, latency: 1ms} # one direction
    default_link: {bandwidth: 10Gbps, latency: 1ms}  # fills every pair not listed (optional)
    host_cores: {local: 2}  # optional, for the simulator: nodes on this host share its 2 cores

`host_cores` (host -> cores; a node's host is its address without the port, `local` for local nodes) and a
node's `cpu_quota` (cores, a cgroup cpu.max it runs under) tell the simulator about CPU nodes that share a
machine or are capped; the planner and the servers ignore them.

The coordinator (vLLM's API server / engine core) is the flow source (it sends token ids to nodes holding
layer 0) and the sink (it receives sampled tokens from nodes holding the last layer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vllm_helix.errors import ClusterSpecError
from vllm_helix.units import format_bandwidth, format_size, parse_bandwidth, parse_duration, parse_size

COORDINATOR = "coordinator"
_RESERVED_NAMES = {COORDINATOR, "source", "sink"}
DEFAULT_NIC = parse_bandwidth("10GB/s")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One compute node: a machine with `gpu_count` GPUs of one type serving one layer range.

    Its worker runs the range with vLLM's tensor parallelism over `tensor_parallel_size` of them: `tp` in the
    cluster file, by default all `gpus` (fewer only to test small hosts; the planner counts `gpus` either way).
    """

    name: str
    gpu: str
    vram_bytes: float
    gpu_count: int = 1
    nic_in_bytes_per_s: float = DEFAULT_NIC
    nic_out_bytes_per_s: float = DEFAULT_NIC
    region: str = "default"
    address: str = "local"
    tp: int | None = None  # None: all gpu_count devices
    cpu_quota: float | None = None  # cores of a CFS quota it runs under (simulator only)

    @property
    def host(self) -> str:
        """The machine it runs on: its address without the port (`local` for local nodes)."""
        return self.address.rsplit(":", 1)[0] if ":" in self.address else self.address

    @property
    def tensor_parallel_size(self) -> int:
        return self.tp or self.gpu_count

    @property
    def gpu_type(self) -> str:
        """Profile key: 'L4' for one L4, 'L4x2' for a machine with two (the reference's naming)."""
        return self.gpu if self.gpu_count == 1 else f"{self.gpu}x{self.gpu_count}"


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A directed network link; `src`/`dst` are node names or COORDINATOR."""

    src: str
    dst: str
    bandwidth_bytes_per_s: float
    latency_s: float


@dataclass(frozen=True, slots=True)
class CoordinatorSpec:
    nic_in_bytes_per_s: float = DEFAULT_NIC
    nic_out_bytes_per_s: float = DEFAULT_NIC
    address: str = "local"


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    nodes: tuple[NodeSpec, ...]
    links: tuple[LinkSpec, ...]
    coordinator: CoordinatorSpec = CoordinatorSpec()
    name: str = "cluster"
    host_cores: tuple[tuple[str, float], ...] = ()  # (host, cores) of hosts whose nodes share their cores
    _by_name: dict[str, NodeSpec] = field(init=False, repr=False, compare=False)
    _links: dict[tuple[str, str], LinkSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {n.name: n for n in self.nodes})
        object.__setattr__(self, "_links", {(lk.src, lk.dst): lk for lk in self.links})

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def node(self, name: str) -> NodeSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise ClusterSpecError(f"unknown node {name!r}; the cluster has {self.node_names}") from None

    def link(self, src: str, dst: str) -> LinkSpec | None:
        return self._links.get((src, dst))

    def composition(self) -> dict[str, int]:
        """Number of nodes per GPU type, e.g. {'A100': 4, 'L4': 8, 'T4': 12}."""
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.gpu_type] = counts.get(node.gpu_type, 0) + 1
        return counts


# ----------------------------------------------------------------------------------------- reading


class _Fields:
    """Reads typed fields from a mapping, reporting errors as `<source>: <path>.<field>: <problem>`."""

    def __init__(self, data: Any, where: str, source: str):
        if not isinstance(data, Mapping):
            raise ClusterSpecError(f"{source}: {where}: expected a mapping, got {type(data).__name__}")
        self.data, self.where, self.source = data, where, source
        self.used: set[str] = set()

    def error(self, key: str, problem: str) -> ClusterSpecError:
        prefix = f"{self.where}.{key}" if self.where else key
        return ClusterSpecError(f"{self.source}: {prefix}: {problem}")

    def get(self, key: str, parse=None, default: Any = ..., check=None) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if default is ...:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        try:
            value = parse(value) if parse else value
        except (ValueError, TypeError) as exc:
            raise self.error(key, str(exc)) from None
        if check is not None:
            problem = check(value)
            if problem:
                raise self.error(key, problem)
        return value

    def finish(self) -> None:
        unknown = sorted(set(map(str, self.data)) - self.used)
        if unknown:
            raise self.error(unknown[0], f"unknown field (known: {sorted(self.used)})")


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _name(value: Any) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise ValueError("must be a non-empty name")
    return str(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {value!r}")
    return value


def cluster_from_dict(data: Any, source: str = "<cluster>") -> ClusterSpec:
    """Build and validate a ClusterSpec from parsed YAML (see the module docstring for the format)."""
    top = _Fields(data, "", source)
    name = top.get("name", str, default=Path(source).stem)
    coordinator = _coordinator(top.get("coordinator", default={}), source)
    defaults = top.get("node_defaults", default={})
    raw_nodes = top.get("nodes", check=lambda v: None if isinstance(v, list) and v else "must be a non-empty list")
    nodes = tuple(_node(raw, i, defaults, source) for i, raw in enumerate(raw_nodes))
    _check_unique_names(nodes, source)
    known = {n.name for n in nodes} | {COORDINATOR}
    links: dict[tuple[str, str], LinkSpec] = {}
    raw_links = top.get("links", default=[], check=lambda v: None if isinstance(v, list) else "must be a list")
    for i, raw in enumerate(raw_links):
        for link in _links(raw, f"links[{i}]", known, source):
            links[(link.src, link.dst)] = link
    host_cores = top.get("host_cores", _host_cores, default=())
    default_link = top.get("default_link", default=None)
    if default_link is not None:
        _fill_default_links(links, nodes, _Fields(default_link, "default_link", source))
    top.finish()
    return ClusterSpec(nodes=nodes, links=tuple(links.values()), coordinator=coordinator, name=name,
                       host_cores=host_cores)


def _host_cores(value: Any) -> tuple[tuple[str, float], ...]:
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping of host to cores, e.g. {local: 2}")
    out = []
    for host, cores in value.items():
        if isinstance(cores, bool) or not isinstance(cores, int | float) or not cores > 0:
            raise ValueError(f"{host}: cores must be a number > 0, got {cores!r}")
        out.append((str(host), float(cores)))
    return tuple(out)


def _coordinator(raw: Any, source: str) -> CoordinatorSpec:
    f = _Fields(raw, "coordinator", source)
    spec = CoordinatorSpec(
        nic_in_bytes_per_s=f.get("nic_in", parse_bandwidth, DEFAULT_NIC, _positive),
        nic_out_bytes_per_s=f.get("nic_out", parse_bandwidth, DEFAULT_NIC, _positive),
        address=f.get("address", str, "local"),
    )
    f.finish()
    return spec


def _node(raw: Any, index: int, defaults: Mapping[str, Any], source: str) -> NodeSpec:
    merged = {**(defaults or {}), **raw} if isinstance(raw, Mapping) else raw
    f = _Fields(merged, f"nodes[{index}]", source)
    name = f.get("name", _name)
    if name in _RESERVED_NAMES:
        raise f.error("name", f"{name!r} is reserved; pick another node name")
    f.where = f"nodes[{index}] ({name})"
    node = NodeSpec(
        name=name,
        gpu=f.get("gpu", _name),
        gpu_count=f.get("gpus", _int, 1, lambda v: None if v >= 1 else "must be >= 1"),
        vram_bytes=f.get("vram", parse_size, check=_positive),
        nic_in_bytes_per_s=f.get("nic_in", parse_bandwidth, DEFAULT_NIC, _positive),
        nic_out_bytes_per_s=f.get("nic_out", parse_bandwidth, DEFAULT_NIC, _positive),
        region=f.get("region", str, "default"),
        address=f.get("address", str, "local"),
        tp=f.get("tp", _int, None),
        cpu_quota=f.get("cpu_quota", float, None, _positive),
    )
    if node.tp is not None and not 1 <= node.tp <= node.gpu_count:
        raise f.error("tp", f"tensor parallel size must be between 1 and the node's gpus ({node.gpu_count}), "
                            f"got {node.tp}")
    f.finish()
    return node


def _check_unique_names(nodes: Iterable[NodeSpec], source: str) -> None:
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if node.name in seen:
            raise ClusterSpecError(f"{source}: nodes[{i}].name: duplicate node name {node.name!r}")
        seen.add(node.name)


def _links(raw: Any, where: str, known: set[str], source: str) -> list[LinkSpec]:
    f = _Fields(raw, where, source)
    bandwidth = f.get("bandwidth", parse_bandwidth, check=_positive)
    latency = f.get("latency", parse_duration, 0.0, _non_negative)

    def endpoint(key: str, value: Any) -> str:
        value = str(value)
        if value not in known:
            raise f.error(key, f"unknown node {value!r}")
        return value

    if "between" in f.data:
        pair = f.get("between", check=lambda v: None if isinstance(v, list) and len(v) == 2 else "must be [a, b]")
        a, b = endpoint("between", pair[0]), endpoint("between", pair[1])
        pairs = [(a, b), (b, a)]
    else:
        pairs = [(endpoint("from", f.get("from")), endpoint("to", f.get("to")))]
    f.finish()
    for a, b in pairs:
        if a == b:
            raise f.error("to", f"a link from {a!r} to itself")
    return [LinkSpec(a, b, bandwidth, latency) for a, b in pairs]


def _fill_default_links(links: dict[tuple[str, str], LinkSpec], nodes: tuple[NodeSpec, ...], f: _Fields) -> None:
    bandwidth = f.get("bandwidth", parse_bandwidth, check=_positive)
    latency = f.get("latency", parse_duration, 0.0, _non_negative)
    f.finish()
    names = [COORDINATOR] + [n.name for n in nodes]
    for a in names:
        for b in names:
            if a != b and (a, b) not in links:
                links[(a, b)] = LinkSpec(a, b, bandwidth, latency)


# ----------------------------------------------------------------------------------------- writing


def cluster_to_dict(cluster: ClusterSpec) -> dict[str, Any]:
    """The YAML form of a cluster (exact: bandwidths in B/s, so a round trip keeps every number)."""
    coord = cluster.coordinator
    return {
        "name": cluster.name,
        "coordinator": {
            "address": coord.address,
            "nic_in": _bw(coord.nic_in_bytes_per_s),
            "nic_out": _bw(coord.nic_out_bytes_per_s),
        },
        "nodes": [
            {
                "name": n.name,
                "gpu": n.gpu,
                **({"gpus": n.gpu_count} if n.gpu_count != 1 else {}),
                **({"tp": n.tp} if n.tp is not None else {}),
                "vram": f"{n.vram_bytes:.10g}B",
                "nic_in": _bw(n.nic_in_bytes_per_s),
                "nic_out": _bw(n.nic_out_bytes_per_s),
                "region": n.region,
                "address": n.address,
                **({"cpu_quota": n.cpu_quota} if n.cpu_quota is not None else {}),
            }
            for n in cluster.nodes
        ],
        "links": [
            {"from": lk.src, "to": lk.dst, "bandwidth": _bw(lk.bandwidth_bytes_per_s),
             "latency": f"{lk.latency_s:.10g}s"}
            for lk in cluster.links
        ],
        **({"host_cores": dict(cluster.host_cores)} if cluster.host_cores else {}),
    }


def _bw(bytes_per_s: float) -> str:
    return f"{bytes_per_s:.10g}B/s"


def save_cluster(cluster: ClusterSpec, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cluster_to_dict(cluster), sort_keys=False, width=120))


def describe_cluster(cluster: ClusterSpec) -> str:
    """One line per node, for CLI output."""
    lines = [f"cluster {cluster.name}: {len(cluster.nodes)} nodes, {len(cluster.links)} directed links"]
    for n in cluster.nodes:
        lines.append(
            f"  {n.name:<16} {n.gpu_type:<6} vram {format_size(n.vram_bytes):<10} "
            f"nic {format_bandwidth(n.nic_in_bytes_per_s)}/{format_bandwidth(n.nic_out_bytes_per_s)} "
            f"region {n.region} at {n.address}"
        )
    return "\n".join(lines)


__all__ = [
    "COORDINATOR",
    "ClusterSpec",
    "CoordinatorSpec",
    "LinkSpec",
    "NodeSpec",
    "cluster_from_dict",
    "cluster_to_dict",
    "describe_cluster",
    "save_cluster",
]
