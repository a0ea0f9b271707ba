"""Readers for the reference system's `.ini` files (helix-spec §1).

* cluster topology (`single24.ini`): `[ComputeNode-i] type=...`, `[Link-i-j]` (both directions),
  `[Link-source-i]` (coordinator -> i), `[Link-i-sink]` (i -> coordinator);
* machine profile (`machine_profile.ini`): NIC speeds and VRAM per GPU type;
* layout solution (`*_sol.ini`): `compute_node_{i+offset}=[layer ids]`;
* simulator cluster (`simulator_cluster.ini`): the nodes, their KV capacity and the directed,
  layer-compatible links in the order the reference simulator numbers them.

Unit convention (helix-spec §0): the reference's `mbps`/`gbps` are 1e6/1e9 and bandwidths are divided by
*byte* sizes, so every bandwidth value is in bytes/s despite the name. We read them the same way, so
`1000 * mbps` is 1 GB/s. Compute node i becomes node `n{i}`; source and sink become the coordinator.
"""

from __future__ import annotations

import ast
import configparser
import math
import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.cluster import (
    COORDINATOR,
    ClusterSpec,
    CoordinatorSpec,
    LinkSpec,
    NodeSpec,
    gpus_problem,
    latency_problem,
    link_bandwidth_problem,
    link_endpoints_problem,
    nic_problem,
    vram_problem,
)
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.text_files import read_text

T = TypeVar("T")
MAX_LITERAL = 100_000  # characters of one value: a layer list of a 10,000-layer model fits

# The reference's utils.py unit names, with its (byte-valued) meanings.
_UNITS = {
    "bps": 1.0, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9,
    "Byte": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9,
    "Sec": 1.0, "MilliSec": 1e-3,
}
_VALUE = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:\*\s*([A-Za-z]+))?\s*$")


def node_name(index: int) -> str:
    return f"n{index}"


class _Ini:
    """configparser with error messages that name the file, section and key."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.parser = configparser.ConfigParser(interpolation=None)
        self.parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case
        text = read_text(self.path, "file")
        try:
            self.parser.read_string(text, source=str(self.path))
        except configparser.Error as exc:
            raise ClusterSpecError(f"{self.path}: not a valid .ini file: {exc.message}") from None

    def error(self, section: str, key: str | None, problem: str) -> ClusterSpecError:
        where = f"[{section}]" + (f" {key}" if key else "")
        return ClusterSpecError(f"{self.path}: {where}: {problem}")

    def has(self, section: str) -> bool:
        return self.parser.has_section(section)

    def raw(self, section: str, key: str) -> str:
        if not self.parser.has_section(section):
            raise self.error(section, None, "missing section")
        if not self.parser.has_option(section, key):
            raise self.error(section, key, "missing key")
        return self.parser.get(section, key)

    def quantity(self, section: str, key: str) -> float:
        text = self.raw(section, key)
        match = _VALUE.match(text)
        if not match or (match.group(2) and match.group(2) not in _UNITS):
            raise self.error(section, key,
                             f"cannot read {text!r}; expected 'NUMBER * UNIT' with UNIT in {list(_UNITS)}")
        value = float(match.group(1)) * _UNITS.get(match.group(2) or "Byte", 1.0)
        if not math.isfinite(value):
            raise self.error(section, key, f"{text!r} is out of range")
        return value

    def checked(self, section: str, key: str, problem: Callable[[float], str | None]) -> float:
        """A quantity that passes one of the cluster reader's checks (planner.cluster `*_problem`)."""
        value = self.quantity(section, key)
        message = problem(value)
        if message:
            raise self.error(section, key, message)
        return value

    def literal(self, section: str, key: str, kind: type[T]) -> T:
        text = self.raw(section, key)
        try:
            if len(text) > MAX_LITERAL:  # the parser's stack and memory grow with nesting (`---...1`, `[[[...`)
                raise ValueError
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, RecursionError, MemoryError):
            raise self.error(section, key, f"cannot read {reprlib.repr(text)} as a {kind.__name__}") from None
        if not isinstance(value, kind):
            raise self.error(section, key, f"expected a {kind.__name__}, got {text!r}")
        return value

    def word(self, section: str, key: str) -> str:
        """A bare or quoted name: `type=L4` or `machine_type="L4"`."""
        return self.raw(section, key).strip().strip("'\"")

    def integer(self, section: str, key: str) -> int:
        value = self.literal(section, key, int)
        if isinstance(value, bool):
            raise self.error(section, key, f"expected an integer, got {self.raw(section, key)!r}")
        return value


# ------------------------------------------------------------------------------- machine profile


@dataclass(frozen=True, slots=True)
class MachineType:
    nic_in_bytes_per_s: float
    nic_out_bytes_per_s: float
    vram_bytes: float


def default_machine_profile() -> Path:
    return Path(str(resources.files("vllm_helix.data") / "reference" / "helix-examples" / "machine_profile.ini"))


def read_machine_profile(path: str | Path) -> tuple[dict[str, MachineType], CoordinatorSpec]:
    """GPU type -> NICs and VRAM, and the coordinator's NICs (from [SourceNode]/[SinkNode])."""
    ini = _Ini(path)
    types = {}
    for section in ini.parser.sections():
        if section in ("SourceNode", "SinkNode"):
            continue
        types[section] = MachineType(
            nic_in_bytes_per_s=ini.checked(section, "inbound_nic_speed", nic_problem),
            nic_out_bytes_per_s=ini.checked(section, "outbound_nic_speed", nic_problem),
            vram_bytes=ini.checked(section, "vram_size", vram_problem),
        )
        gpu_count = _split_gpu_type(section)[1]
        if problem := gpus_problem(gpu_count):
            raise ini.error(section, None, f"GPU count {gpu_count}: {problem}")
    coordinator = CoordinatorSpec(
        nic_in_bytes_per_s=ini.checked("SinkNode", "inbound_nic_speed", nic_problem),
        nic_out_bytes_per_s=ini.checked("SourceNode", "outbound_nic_speed", nic_problem),
    )
    return types, coordinator


def _split_gpu_type(gpu_type: str) -> tuple[str, int]:
    """'T4x2' -> ('T4', 2)."""
    match = re.fullmatch(r"(.+?)x(\d+)", gpu_type)
    return (match.group(1), int(match.group(2))) if match else (gpu_type, 1)


# ------------------------------------------------------------------------------ cluster topology


def read_cluster_ini(path: str | Path, machine_profile: str | Path | None = None) -> ClusterSpec:
    """A reference cluster topology file, with NICs/VRAM from the machine profile (bundled by default)."""
    ini = _Ini(path)
    machines, coordinator = read_machine_profile(machine_profile or default_machine_profile())
    count = ini.integer("NodeNames", "total_compute_nodes")
    if count <= 0:
        raise ini.error("NodeNames", "total_compute_nodes", "must be > 0")
    nodes = []
    for i in range(count):
        section = f"ComputeNode-{i}"
        gpu_type = ini.word(section, "type")
        if gpu_type not in machines:
            raise ini.error(section, "type",
                            f"unknown GPU type {gpu_type!r}; the machine profile has {sorted(machines)}")
        gpu, gpus = _split_gpu_type(gpu_type)
        m = machines[gpu_type]
        nodes.append(NodeSpec(node_name(i), gpu, m.vram_bytes, gpus, m.nic_in_bytes_per_s, m.nic_out_bytes_per_s))
    links = []
    for section in ini.parser.sections():
        if not section.startswith("Link-"):
            continue
        parts = section.split("-")
        if len(parts) != 3:
            raise ini.error(section, None, "link sections are named Link-<a>-<b>")
        a, b = (_endpoint(ini, section, p, count) for p in parts[1:])
        if parts[1] == "sink" or parts[2] == "source":
            raise ini.error(section, None, "the source only sends and the sink only receives")
        if problem := link_endpoints_problem(a, b):
            raise ini.error(section, None, f"{problem}; a link joins two nodes, the source and a node, or a node "
                                           "and the sink")
        bandwidth = ini.checked(section, "bandwidth", link_bandwidth_problem)
        latency = ini.checked(section, "latency", latency_problem)
        if parts[1] == "source" or parts[2] == "sink":  # coordinator links are one-way
            links.append(LinkSpec(a, b, bandwidth, latency))
        else:
            links += [LinkSpec(a, b, bandwidth, latency), LinkSpec(b, a, bandwidth, latency)]
    _check_connected_lists(ini, count, links)
    return ClusterSpec(tuple(nodes), tuple(links), coordinator, name=Path(path).stem)


def _endpoint(ini: _Ini, section: str, text: str, count: int) -> str:
    if text in ("source", "sink"):
        return COORDINATOR
    if not (text.isascii() and text.isdigit()) or int(text) >= count:  # isdigit alone takes '²'
        raise ini.error(section, None, f"node id {text!r} out of range 0..{count - 1}")
    return node_name(int(text))


def _check_connected_lists(ini: _Ini, count: int, links: list[LinkSpec]) -> None:
    """The [SourceNode]/[SinkNode] neighbour lists must name nodes that exist and have a link."""
    have = {(lk.src, lk.dst) for lk in links}
    for section, arc in (("SourceNode", lambda i: (COORDINATOR, node_name(i))),
                         ("SinkNode", lambda i: (node_name(i), COORDINATOR))):
        if not ini.has(section):
            continue
        for i in ini.literal(section, "connected_nodes", list):
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count:
                raise ini.error(section, "connected_nodes", f"node id {i!r} out of range 0..{count - 1}")
            if arc(i) not in have:
                raise ini.error(section, "connected_nodes", f"node {i} is listed but has no link section")


# ------------------------------------------------------------------------------ layout solution


def read_solution_ini(path: str | Path, cluster: ClusterSpec) -> Placement:
    """A reference `*_sol.ini`: node i holds the listed (contiguous) layer ids; [] means unused."""
    ini = _Ini(path)
    offset = ini.integer("Settings", "offset") if ini.has("Settings") else 2
    if offset < 0:
        raise ini.error("Settings", "offset", f"must be >= 0, got {offset}")
    if not ini.has("Solution"):
        raise ini.error("Solution", None, "missing section")
    ranges = {}
    keys: dict[int, str] = {}  # node index -> the key that gave it
    for key in ini.parser.options("Solution"):
        match = re.fullmatch(r"compute_node_(\d+)", key)
        if not match:
            raise ini.error("Solution", key, "expected keys compute_node_<id>")
        index = int(match.group(1)) - offset
        if not 0 <= index < len(cluster.nodes):
            raise ini.error("Solution", key, f"node id out of range: the cluster has {len(cluster.nodes)} nodes "
                            f"(ids {offset}..{offset + len(cluster.nodes) - 1})")
        if index in keys:
            raise ini.error("Solution", key, f"node id {index + offset} is also given as {keys[index]}")
        keys[index] = key
        layers = ini.literal("Solution", key, list)
        if not layers:
            continue
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
            raise ini.error("Solution", key, f"expected a list of layer ids (integers >= 0), got {layers!r}")
        if layers != list(range(layers[0], layers[0] + len(layers))):
            raise ini.error("Solution", key, f"layers must be contiguous, got {layers}")
        ranges[cluster.nodes[index].name] = LayerRange(layers[0], layers[0] + len(layers))
    return Placement(ranges)


# ----------------------------------------------------------------------------- simulator cluster


@dataclass(frozen=True, slots=True)
class SimulatorClusterIni:
    """A reference simulator cluster: nodes with their KV capacity and the ordered directed links."""

    cluster: ClusterSpec
    kv_slots: dict[str, int]
    link_order: tuple[tuple[str, str], ...]


def read_simulator_cluster_ini(path: str | Path) -> SimulatorClusterIni:
    ini = _Ini(path)
    coordinator = CoordinatorSpec(
        nic_in_bytes_per_s=ini.checked("Coordinator", "inbound_nic_speed", nic_problem),
        nic_out_bytes_per_s=ini.checked("Coordinator", "outbound_nic_speed", nic_problem),
    )
    names = ini.literal("ComputeNodes", "names", list)
    rename = {"source": COORDINATOR, "sink": COORDINATOR}
    nodes, kv = [], {}
    for sim_name in names:
        match = re.fullmatch(r"compute_node_(\d+)", str(sim_name))
        if not match:
            raise ini.error("ComputeNodes", "names", f"unexpected node name {sim_name!r}")
        name = node_name(int(match.group(1)) - 2)
        rename[str(sim_name)] = name
        if name in kv:
            raise ini.error("ComputeNodes", "names", f"node {sim_name!r} is listed twice")
        gpu, gpus = _split_gpu_type(ini.word(sim_name, "machine_type"))
        if problem := gpus_problem(gpus):
            raise ini.error(sim_name, "machine_type", f"GPU count {gpus}: {problem}")
        nodes.append(NodeSpec(name, gpu, ini.checked(sim_name, "vram_size", vram_problem), gpus,
                              ini.checked(sim_name, "inbound_nic_speed", nic_problem),
                              ini.checked(sim_name, "outbound_nic_speed", nic_problem)))
        kv[name] = ini.integer(sim_name, "kv_cache_capacity")
        if kv[name] < 1:  # a node that holds no token would refuse every query, and the run still 'succeed'
            raise ini.error(sim_name, "kv_cache_capacity", f"must be >= 1 token, got {kv[name]}")
    links, order = [], []
    for link_name in ini.literal("Links", "names", list):
        src, dst = ini.raw(link_name, "in").strip(), ini.raw(link_name, "out").strip()
        for end in (src, dst):
            if end not in rename:
                raise ini.error(link_name, None, f"unknown node {end!r}")
        if problem := link_endpoints_problem(rename[src], rename[dst]):
            raise ini.error(link_name, None, problem)
        links.append(LinkSpec(rename[src], rename[dst], ini.checked(link_name, "bandwidth", link_bandwidth_problem),
                              ini.checked(link_name, "latency", latency_problem)))
        order.append((rename[src], rename[dst]))
    cluster = ClusterSpec(tuple(nodes), tuple(links), coordinator, name=Path(path).parent.name)
    return SimulatorClusterIni(cluster, kv, tuple(order))
