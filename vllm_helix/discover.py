"""Cluster discovery: `vllm-helix discover --hosts h1:port,... | --ray -o cluster.yaml` (README "Ray").

Each host runs a probe (`vllm-helix worker --probe --bind HOST:PORT`, or a Ray actor per Ray node with
`--ray`); the discoverer is the coordinator's end. Over the project's own transport (vllm_helix/comm) it asks
every probe what it has (accelerator type and count, memory), then measures every directed link, one at a
time so that measurements do not share the network: between the coordinator and each host, and between every
two hosts (the discoverer asks the sending probe to measure). A link's latency is half the shortest of a few
round trips (one-way delays cannot be told apart without synchronized clocks); its bandwidth is a burst's bytes
over the time from its first byte sent to its last received (the sender's clock, less one round trip), the burst
doubling until it lasts PROBE_MIN_S; the best of the last two bursts counts (of three when those two differ by
over a tenth). Timed by the sender: a receiver that stalls (a busy host) makes an estimate low, never high.
The result is a cluster file for `vllm-helix plan`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vllm_helix.comm import Endpoint, EndpointOptions, Header, Message
from vllm_helix.coordinator.ray_nodes import RESOURCE_PREFIX, connect_ray
from vllm_helix.errors import ConfigError, HelixError, PeerLost, TransportTimeout
from vllm_helix.planner.cluster import COORDINATOR, ClusterSpec, CoordinatorSpec, LinkSpec, NodeSpec

PINGS = 15
CHUNK_BYTES = 256 << 10
FIRST_BURST_BYTES = 1 << 20
MAX_BURST_BYTES = 64 << 20  # faster links are timed over shorter bursts: a probe stays short
PROBE_MIN_S = 0.8  # a burst shorter than this doubles and runs again (up to MAX_BURST_BYTES)
logger = logging.getLogger(__name__)


class ProbeError(HelixError):
    """A host did not answer a probe, or answered nonsense: the message names it."""


def host_info() -> dict[str, Any]:
    """This host's accelerators: type, count, memory in bytes (all GPUs together); `cpu` and RAM without GPUs."""
    try:
        import torch

        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            props = [torch.cuda.get_device_properties(i) for i in range(count)]
            return {"gpu": short_gpu_name(props[0].name), "gpus": count,
                    "vram": sum(p.total_memory for p in props)}
    except ImportError:
        pass
    return {"gpu": "cpu", "gpus": 1, "vram": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}


def short_gpu_name(name: str) -> str:
    """'NVIDIA A100-SXM4-80GB' -> 'A100', 'Tesla T4' -> 'T4', 'NVIDIA L4' -> 'L4': the planner's GPU names."""
    words = name.replace("NVIDIA", "").replace("Tesla", "").split()
    return words[0].split("-")[0] if words else name


def parse_host(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(f"--hosts: {text!r} is not HOST:PORT (the --bind of `vllm-helix worker --probe` there)")
    return host.strip("[]"), int(port)


def resolve_host(host: str, port: int) -> str:
    try:
        ip = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except OSError as exc:
        raise ProbeError(f"host {host}:{port}: cannot resolve {host} ({exc.strerror})") from None
    return f"{ip}:{port}"


def route_ip(ip: str) -> str:
    """This host's address on the route to `ip` (where the probes can reach the discoverer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((ip, 9))  # no packet is sent: this only asks the routing table
        return s.getsockname()[0]


# ------------------------------------------------------------------------------------ the probe (both ends)


class Prober:
    """One end of the probe protocol: answers info, pings and bursts; measures its links to others on request.
    Every request carries its sender's address, so the answering end can dial back."""

    def __init__(self, name: str, bind: str, timeout_s: float = 10.0):
        if bind.rsplit(":", 1)[0].strip("[]") in ("0.0.0.0", "*", "::", ""):
            raise ConfigError(f"--bind {bind}: give the address the other hosts reach this one at, not a wildcard")
        self.name, self.timeout_s = name, timeout_s
        self.endpoint = Endpoint(name, f"tcp://{bind}", options=EndpointOptions(peer_timeout_s=max(3.0, timeout_s)))
        self.address = self.endpoint.address.removeprefix("tcp://")
        self.dialed: dict[str, str] = {}
        # probes the discoverer dialed before it knew their names: their name -> the peer name it dialed. One
        # address is dialed once: two connections of one sender to one probe would clash there.
        self.alias: dict[str, str] = {}
        self._bursts: dict[str, int] = {}  # chunks received of each burst
        self._burst_id = 0  # bursts this prober sent

    def close(self) -> None:
        self.endpoint.close()

    def dial(self, peer: str, address: str) -> None:
        if self.dialed.get(peer) != address:
            self.endpoint.connect(peer, f"tcp://{address}")
            self.dialed[peer] = address

    def send(self, peer: str, kind: str, payloads: Sequence[bytes] = (), **meta: Any) -> None:
        header = Header(kind=f"probe.{kind}", meta={"from": self.name, "at": self.address, **meta})
        try:
            self.endpoint.send(peer, header, list(payloads), timeout=self.timeout_s)
        except (PeerLost, TransportTimeout) as exc:
            raise ProbeError(f"{self._where(peer)}: {exc}") from None

    def peer_of(self, sender: str) -> str:
        return self.alias.get(sender, sender)

    def _where(self, peer: str) -> str:
        return f"host {self.dialed.get(peer, peer)} ({peer})"

    def serve_forever(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Answer requests until `stop()` says so (checked at least every half second)."""
        while not stop():
            try:
                message = self.endpoint.recv(0.5)
            except (TransportTimeout, PeerLost):
                continue
            try:
                self.handle(message)
            except ProbeError as exc:  # its sender went away: the next discover starts afresh
                logger.warning("probe %s: %s", self.name, exc)

    def wait_for(self, kind: str, peer: str, timeout_s: float | None = None) -> Message:
        """The next `probe.<kind>` from `peer`, answering any other request meanwhile."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.endpoint.recv(min(left, 0.5))
            except TransportTimeout:
                continue
            except PeerLost as exc:
                if getattr(exc, "peer", None) == peer:
                    raise ProbeError(f"{self._where(peer)}: {exc}") from None
                continue
            if message.header.kind == f"probe.{kind}" and self.peer_of(message.sender) == peer:
                return message
            self.handle(message)
        raise ProbeError(f"{self._where(peer)}: no probe answered within {timeout_s or self.timeout_s:.0f} s "
                         "(is `vllm-helix worker --probe` running there, and reachable from here?)")

    def handle(self, message: Message) -> None:
        meta, kind, sender = message.header.meta, message.header.kind, message.sender
        if sender in self.alias:
            sender = self.peer_of(sender)
        elif "at" in meta:
            self.dial(sender, meta["at"])
        if kind == "probe.info":
            self.send(sender, "info.reply", ask=meta.get("ask"), **host_info())
        elif kind == "probe.ping":
            self.send(sender, "pong", seq=meta["seq"])
        elif kind == "probe.burst":
            key = f"{sender}/{meta['id']}"
            self._bursts[key] = self._bursts.get(key, 0) + 1
            if self._bursts[key] == meta["chunks"]:
                del self._bursts[key]
                self.send(sender, "burst.done", id=meta["id"])
        elif kind == "probe.measure":
            try:
                bandwidth, latency = self.measure(meta["target"], meta["target_at"])
            except ProbeError as exc:  # the discoverer reports it, naming this link
                self.send(sender, "measured", target=meta["target"], error=str(exc))
            else:
                self.send(sender, "measured", target=meta["target"], bandwidth=bandwidth, latency=latency)

    def measure(self, peer: str, address: str) -> tuple[float, float]:
        """(bytes/s, seconds) of the link from here to `peer`."""
        self.dial(peer, address)
        rtts = []
        for seq in range(PINGS):
            sent = time.perf_counter()
            self.send(peer, "ping", seq=seq)
            self.wait_for("pong", peer)
            rtts.append(time.perf_counter() - sent)
        rtt = min(rtts)
        chunks, previous = FIRST_BURST_BYTES // CHUNK_BYTES, 0.0
        while True:  # the earlier, shorter bursts also open the TCP window for the one that counts
            rate, seconds = self._burst(peer, chunks, rtt)
            if seconds >= PROBE_MIN_S or chunks * CHUNK_BYTES >= MAX_BURST_BYTES:
                break
            previous, chunks = rate, chunks * 2
        # a stall on a busy host only ever slows a burst down: the best of the last two, and of a third when they
        # disagree by more than a tenth
        best = max(rate, previous)
        if min(rate, previous) < 0.9 * best:
            best = max(best, self._burst(peer, chunks, rtt)[0])
        return best, rtt / 2

    def _burst(self, peer: str, chunks: int, rtt: float) -> tuple[float, float]:
        """(bytes/s, seconds) of one burst of `chunks` chunks to `peer`."""
        self._burst_id += 1
        chunk = bytes(CHUNK_BYTES)
        started = time.perf_counter()
        for _ in range(chunks):
            self.send(peer, "burst", [chunk], id=self._burst_id, chunks=chunks)
        self.wait_for("burst.done", peer, self.timeout_s + 8 * chunks * CHUNK_BYTES / 1e6)
        # from the first byte sent to the last received: less the way there of the first and back of the reply
        seconds = max(time.perf_counter() - started - rtt, 1e-6)
        return chunks * CHUNK_BYTES / seconds, seconds


# ------------------------------------------------------------------------------------ the discoverer


@dataclass
class Probe:
    """A probe found at `address`: its node name and what it has."""

    name: str  # its own
    address: str
    info: dict[str, Any]

    @property
    def label(self) -> str:
        """The discoverer's peer name for it (it dialed the address before it knew the name)."""
        return f"host {self.address}"


def discover(addresses: Sequence[str], bind_ip: str | None = None, timeout_s: float = 10.0,
             names: Sequence[str | None] = (), progress: Callable[[str], None] = lambda line: None) -> ClusterSpec:
    """The cluster of the probes at `addresses` (`ip:port`), the coordinator being this process."""
    if not addresses:
        raise ConfigError("no hosts to discover")
    ip = bind_ip or route_ip(addresses[0].rsplit(":", 1)[0])
    me = Prober(COORDINATOR, f"{ip}:0", timeout_s)
    try:
        probes = _ask_info(me, addresses, names)
        links = []
        ends = [Probe(COORDINATOR, me.address, {})] + probes
        for src in ends:
            for dst in ends:
                if src is not dst:
                    started = time.monotonic()
                    links.append(_measure(me, src, dst))
                    progress(f"  {src.name:>12} -> {dst.name:<12} {links[-1].bandwidth_bytes_per_s * 8e-6:10.1f} "
                             f"Mbit/s {links[-1].latency_s * 1e3:8.2f} ms ({time.monotonic() - started:.1f} s)")
        return _cluster(probes, links)
    finally:
        me.close()


def _measure(me: Prober, src: Probe, dst: Probe) -> LinkSpec:
    if src.name == COORDINATOR:
        bandwidth, latency = me.measure(dst.label, dst.address)
    else:  # the probe measures; it knows the others by their own names
        me.send(src.label, "measure", target=dst.name, target_at=dst.address)
        meta = me.wait_for("measured", src.label, 4 * me.timeout_s + 60).header.meta
        if "error" in meta:
            raise ProbeError(f"measuring {src.name} -> {dst.name}: {meta['error']}")
        bandwidth, latency = meta["bandwidth"], meta["latency"]
    return LinkSpec(src.name, dst.name, bandwidth, latency)


def _ask_info(me: Prober, addresses: Sequence[str], names: Sequence[str | None]) -> list[Probe]:
    """What each probe has; its node name: `names[i]`, else its own (made unique with its address)."""
    probes: list[Probe] = []
    for i, address in enumerate(addresses):
        label = Probe("", address, {}).label
        me.dial(label, address)
        me.send(label, "info", ask=address)
        deadline = time.monotonic() + me.timeout_s
        reply = None
        while reply is None:
            if time.monotonic() > deadline:
                raise ProbeError(f"host {address}: no probe answered within {me.timeout_s:.0f} s (is `vllm-helix "
                                 f"worker --probe --bind {address}` running there, and reachable from here?)")
            try:
                message = me.endpoint.recv(0.5)
            except (TransportTimeout, PeerLost):
                continue
            if message.header.kind == "probe.info.reply" and message.header.meta.get("ask") == address:
                reply = message
            else:
                me.handle(message)
        me.alias[reply.sender] = label
        name = (names[i] if i < len(names) else None) or reply.sender
        if any(p.info["node_name"] == name for p in probes):
            name = f"{name}-{address.rsplit(':', 1)[0].replace('.', '-')}"
        if any(p.name == reply.sender for p in probes):
            raise ProbeError(f"host {address}: its probe is named {reply.sender!r} like another one; start it with "
                             "`vllm-helix worker --probe --node NAME`")
        probes.append(Probe(reply.sender, address, dict(reply.header.meta) | {"node_name": name}))
    return probes


def discover_hosts(hosts: Sequence[tuple[str, int]], bind_ip: str | None, timeout_s: float,
                   progress: Callable[[str], None]) -> ClusterSpec:
    """`vllm-helix discover --hosts`: probes started by hand (`vllm-helix worker --probe --bind H:PORT`)."""
    addresses = [resolve_host(host, port) for host, port in hosts]
    for address in {a for a in addresses if addresses.count(a) > 1}:
        raise ConfigError(f"--hosts: {address} is given twice")
    cluster = discover(addresses, bind_ip, timeout_s, progress=progress)
    given = {address: f"{host}:{port}" for address, (host, port) in zip(addresses, hosts, strict=True)}
    nodes = tuple(dataclasses.replace(n, address=given[n.address]) for n in cluster.nodes)
    return dataclasses.replace(cluster, nodes=nodes)


# ------------------------------------------------------------------------------------ on Ray


class ProbeActor:
    """A probe on one Ray node (reserving its GPUs, so that it sees them), serving in a thread of the actor."""

    def __init__(self, name: str):
        import ray

        self.prober = Prober(name, f"{ray.util.get_node_ip_address()}:0")
        self.done = threading.Event()
        threading.Thread(target=self.prober.serve_forever, args=(self.done.is_set,), daemon=True).start()

    def address(self) -> str:
        return self.prober.address

    def stop(self) -> None:
        self.done.set()


def ray_node_name(ray_node: dict[str, Any]) -> str:
    """`helix_node:<name>` of a Ray node (what the Ray launcher matches), else `ray-<its IP>`."""
    for resource in ray_node["Resources"]:
        if resource.startswith(RESOURCE_PREFIX):
            return resource.removeprefix(RESOURCE_PREFIX)
    return "ray-" + ray_node["NodeManagerAddress"].replace(".", "-").replace(":", "-")


def discover_ray(timeout_s: float, progress: Callable[[str], None]) -> ClusterSpec:
    """`vllm-helix discover --ray`: one probe actor per live node of the running Ray cluster."""
    ray = connect_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor_class = ray.remote(ProbeActor)
    ray_nodes = [n for n in ray.nodes() if n.get("Alive")]
    actors, names = [], []
    try:
        for ray_node in ray_nodes:
            names.append(ray_node_name(ray_node))
            strategy = NodeAffinitySchedulingStrategy(ray_node["NodeID"], soft=False)
            actors.append(actor_class.options(num_cpus=0, num_gpus=ray_node["Resources"].get("GPU", 0),
                                              scheduling_strategy=strategy).remote(names[-1]))
        try:
            addresses = ray.get([a.address.remote() for a in actors], timeout=timeout_s + 30)
        except ray.exceptions.GetTimeoutError:
            raise ProbeError(f"Ray did not start the probes on {', '.join(names)} within {timeout_s + 30:.0f} s "
                             "(their GPUs taken?)") from None
        return discover(addresses, ray.util.get_node_ip_address(), timeout_s, names, progress)
    finally:
        for actor in actors:
            ray.kill(actor)


def _cluster(probes: Sequence[Probe], links: Sequence[LinkSpec]) -> ClusterSpec:
    """Probe names -> node names; each NIC as fast as its fastest measured link that way."""
    rename = {p.name: p.info["node_name"] for p in probes} | {COORDINATOR: COORDINATOR}
    links = [LinkSpec(rename[lk.src], rename[lk.dst], lk.bandwidth_bytes_per_s, lk.latency_s) for lk in links]

    def fastest(name: str, side: str) -> float:
        return max(lk.bandwidth_bytes_per_s for lk in links if getattr(lk, side) == name)

    nodes = tuple(NodeSpec(name=rename[p.name], gpu=p.info["gpu"], gpu_count=int(p.info["gpus"]),
                           vram_bytes=float(p.info["vram"]), nic_in_bytes_per_s=fastest(rename[p.name], "dst"),
                           nic_out_bytes_per_s=fastest(rename[p.name], "src"), address=p.address) for p in probes)
    coordinator = CoordinatorSpec(fastest(COORDINATOR, "dst"), fastest(COORDINATOR, "src"), "local")
    return ClusterSpec(nodes, tuple(links), coordinator, "discovered")
