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

A node's `name` is 1 to 64 letters, digits, `.`, `_` or `-` (it names the node's key file, trace and log),
and not `coordinator`, `source` or `sink`.

An `address` is `local` (a process on this machine, given a free port at start) or HOST:PORT with an IPv4
address or host name (IPv6 is refused: the transport cannot use it); no two nodes, nor a node and the coordinator,
share one. Numbers are bounded (links 1kbps..1000TB/s and at most 1 hour of latency, VRAM at most 1000TB, at most
512 GPUs a node): the same checks apply to the reference `.ini` files (planner.ini).

`host_cores` (host -> cores; a node's host is its address without the port, `local` for local nodes) and a
node's `cpu_quota` (cores, a cgroup cpu.max it runs under) tell the simulator about CPU nodes that share a
machine or are capped; the planner and the servers ignore them.

The coordinator (vLLM's API server / engine core) is the flow source (it sends token ids to nodes holding
layer 0) and the sink (it receives sampled tokens from nodes holding the last layer).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vllm_helix.errors import ClusterSpecError
from vllm_helix.output_files import write_text
from vllm_helix.units import format_bandwidth, format_size, parse_bandwidth, parse_duration, parse_size

COORDINATOR = "coordinator"
LOCAL = "local"
_RESERVED_NAMES = {COORDINATOR, "source", "sink"}
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_NIC = parse_bandwidth("10GB/s")

# Bounds on what a cluster may say, shared by the YAML reader and the reference `.ini` readers (planner.ini):
# a number outside them is a typo, and would overflow or stall the planner's flow computation.
MIN_LINK_BANDWIDTH = parse_bandwidth("1kbps")
MAX_BANDWIDTH = parse_bandwidth("1000TB/s")
MAX_LATENCY_S = 3600.0
MAX_VRAM = parse_size("1000TB")
MAX_GPUS = 512


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
            got = "nothing (the file is empty)" if data is None and not where else type(data).__name__
            raise ClusterSpecError(f"{source}: {where + ': ' if where else ''}expected a mapping, got {got}")
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


# ------------------------------------------------------------ checks shared with the .ini readers
# Each returns None for a good value, else the problem (the reader adds file and field).


def nic_problem(bytes_per_s: float) -> str | None:
    """A NIC speed: > 0 and at most MAX_BANDWIDTH."""
    if not bytes_per_s > 0:
        return "must be > 0"
    if not bytes_per_s <= MAX_BANDWIDTH:
        return f"must be at most {format_bandwidth(MAX_BANDWIDTH)}, got {bytes_per_s:.6g}B/s"
    return None


def link_bandwidth_problem(bytes_per_s: float) -> str | None:
    """A link's bandwidth: between 1 kbps and MAX_BANDWIDTH."""
    problem = nic_problem(bytes_per_s)
    if problem is None and bytes_per_s < MIN_LINK_BANDWIDTH:
        problem = f"must be at least 1kbps ({format_bandwidth(MIN_LINK_BANDWIDTH)}), got {bytes_per_s:.6g}B/s"
    return problem


def latency_problem(seconds: float) -> str | None:
    """A link's latency: between 0 and an hour."""
    if not seconds >= 0:
        return f"must be >= 0, got {seconds:.6g}s"
    if not seconds <= MAX_LATENCY_S:
        return f"must be at most 1 hour ({MAX_LATENCY_S:g}s), got {seconds:.6g}s"
    return None


def vram_problem(n_bytes: float) -> str | None:
    """A node's VRAM: > 0 and at most MAX_VRAM."""
    if not n_bytes > 0:
        return "must be > 0"
    if not n_bytes <= MAX_VRAM:
        return f"must be at most {format_size(MAX_VRAM)}, got {n_bytes:.6g}B"
    return None


def gpus_problem(count: int) -> str | None:
    """A node's GPU count: 1 to MAX_GPUS."""
    if count < 1:
        return "must be >= 1"
    return None if count <= MAX_GPUS else f"must be at most {MAX_GPUS}, got {count}"


def link_endpoints_problem(src: str, dst: str) -> str | None:
    return f"a link from {src!r} to itself" if src == dst else None


_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")  # a host name or an IPv4 address: dot-separated labels


def parse_address(value: Any) -> str:
    """`local`, or HOST:PORT (optionally `tcp://HOST:PORT`) with an IPv4 address or host name and a port in
    1..65535. IPv6 is refused: the transport (libzmq without ZMQ_IPV6) cannot use it."""
    if not isinstance(value, str):
        raise ValueError(f"must be 'local' or HOST:PORT, got {value!r}")
    if value == LOCAL:
        return value
    text = value.removeprefix("tcp://")
    if "[" in text or text.count(":") > 1:
        raise ValueError(f"{value!r} is not 'local' or HOST:PORT: IPv6 addresses are not supported, give an IPv4 "
                         "address or a host name (e.g. 10.0.0.7:6100)")
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not 'local' or HOST:PORT (e.g. 10.0.0.7:6100)")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{value!r}: port {port!r} is not a number in 1..65535")
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(f"{value!r}: {host!r} is not a host name or IPv4 address")
    return value


def address_key(address: str) -> str:
    """The host:port an address names, for telling whether two addresses are the same."""
    return address.removeprefix("tcp://").lower()


def _name(value: Any) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise ValueError("must be a non-empty name")
    return str(value)


def _node_name(value: Any) -> str:
    """A node name also names files (its key beside the plan, its trace and log) and its transport peer."""
    name = _name(value)
    if not NODE_NAME.fullmatch(name):
        raise ValueError(f"{name[:80]!r} is not a node name: use 1 to 64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return name


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, got {value!r}")
    return value


def _number(value: Any) -> float:
    """A finite int or float (not a bool, not a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return float(value)


def cluster_from_dict(data: Any, source: str = "<cluster>") -> ClusterSpec:
    """Build and validate a ClusterSpec from parsed YAML (see the module docstring for the format)."""
    top = _Fields(data, "", source)
    name = top.get("name", _name, default=Path(source).stem)
    coordinator = _coordinator(top.get("coordinator", default={}), source)
    defaults = top.get("node_defaults", default={},
                       check=lambda v: None if isinstance(v, Mapping) else "must be a mapping of node fields")
    raw_nodes = top.get("nodes", check=lambda v: None if isinstance(v, list) and v else "must be a non-empty list")
    nodes = tuple(_node(raw, i, defaults, source) for i, raw in enumerate(raw_nodes))
    _check_unique_names(nodes, source)
    _check_unique_addresses(nodes, coordinator, source)
    known = {n.name for n in nodes} | {COORDINATOR}
    links: dict[tuple[str, str], LinkSpec] = {}
    raw_links = top.get("links", default=[], check=lambda v: None if isinstance(v, list) else "must be a list")
    given: dict[tuple[str, str], int] = {}
    for i, raw in enumerate(raw_links):
        for link in _links(raw, f"links[{i}]", known, source):
            if (link.src, link.dst) in given:
                raise ClusterSpecError(f"{source}: links[{i}]: the link from {link.src!r} to {link.dst!r} is "
                                       f"already given by links[{given[link.src, link.dst]}]")
            given[(link.src, link.dst)] = i
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
        if isinstance(cores, bool) or not isinstance(cores, int | float) or not 0 < cores < math.inf:
            raise ValueError(f"{host}: cores must be a finite number > 0, got {cores!r}")
        out.append((str(host), float(cores)))
    return tuple(out)


def _coordinator(raw: Any, source: str) -> CoordinatorSpec:
    f = _Fields(raw, "coordinator", source)
    spec = CoordinatorSpec(
        nic_in_bytes_per_s=f.get("nic_in", parse_bandwidth, DEFAULT_NIC, nic_problem),
        nic_out_bytes_per_s=f.get("nic_out", parse_bandwidth, DEFAULT_NIC, nic_problem),
        address=f.get("address", parse_address, LOCAL),
    )
    f.finish()
    return spec


def _node(raw: Any, index: int, defaults: Mapping[str, Any], source: str) -> NodeSpec:
    merged = {**(defaults or {}), **raw} if isinstance(raw, Mapping) else raw
    f = _Fields(merged, f"nodes[{index}]", source)
    name = f.get("name", _node_name)
    if name in _RESERVED_NAMES:
        raise f.error("name", f"{name!r} is reserved; pick another node name")
    f.where = f"nodes[{index}] ({name})"
    node = NodeSpec(
        name=name,
        gpu=f.get("gpu", _name),
        gpu_count=f.get("gpus", _int, 1, gpus_problem),
        vram_bytes=f.get("vram", parse_size, check=vram_problem),
        nic_in_bytes_per_s=f.get("nic_in", parse_bandwidth, DEFAULT_NIC, nic_problem),
        nic_out_bytes_per_s=f.get("nic_out", parse_bandwidth, DEFAULT_NIC, nic_problem),
        region=f.get("region", str, "default"),
        address=f.get("address", parse_address, LOCAL),
        tp=f.get("tp", _int, None),
        cpu_quota=f.get("cpu_quota", _number, None, _positive),
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


def _check_unique_addresses(nodes: Iterable[NodeSpec], coordinator: CoordinatorSpec, source: str) -> None:
    """Two processes cannot listen on one host:port (`local` is a fresh port each, so it may repeat)."""
    seen: dict[str, str] = {}
    if coordinator.address != LOCAL:
        seen[address_key(coordinator.address)] = "the coordinator"
    for i, node in enumerate(nodes):
        if node.address == LOCAL:
            continue
        other = seen.setdefault(address_key(node.address), f"node {node.name!r}")
        if other != f"node {node.name!r}":
            raise ClusterSpecError(f"{source}: nodes[{i}] ({node.name}).address: {node.address!r} is also the "
                                   f"address of {other}; give each node its own HOST:PORT")


def _links(raw: Any, where: str, known: set[str], source: str) -> list[LinkSpec]:
    f = _Fields(raw, where, source)
    bandwidth = f.get("bandwidth", parse_bandwidth, check=link_bandwidth_problem)
    latency = f.get("latency", parse_duration, 0.0, latency_problem)

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
        problem = link_endpoints_problem(a, b)
        if problem:
            raise f.error("between" if "between" in f.data else "to", problem)
    return [LinkSpec(a, b, bandwidth, latency) for a, b in pairs]


def _fill_default_links(links: dict[tuple[str, str], LinkSpec], nodes: tuple[NodeSpec, ...], f: _Fields) -> None:
    bandwidth = f.get("bandwidth", parse_bandwidth, check=link_bandwidth_problem)
    latency = f.get("latency", parse_duration, 0.0, latency_problem)
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
    write_text(path, yaml.safe_dump(cluster_to_dict(cluster), sort_keys=False, width=120), "cluster")


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
    "LOCAL",
    "ClusterSpec",
    "CoordinatorSpec",
    "LinkSpec",
    "NodeSpec",
    "cluster_from_dict",
    "cluster_to_dict",
    "describe_cluster",
    "save_cluster",
]
