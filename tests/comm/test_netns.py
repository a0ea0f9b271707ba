"""Multi-host transport over real (virtual) links: network namespaces, veth pairs, shaped with tc.

Each link joins the root namespace (this test, 10.77.N.1) to a namespace holding an echo peer
(10.77.N.2). Links are shaped with `netem rate R delay D` where the kernel has netem, otherwise
with `tbf rate R` (bandwidth only; the test says which). A cut link (`ip link set down`) must
surface as PeerLost, and the peer must come back when the link does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from comm_helpers import start_peer

from vllm_helix.comm import Endpoint, EndpointOptions, Header
from vllm_helix.errors import PeerLost, TransportTimeout

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("tc") is None, reason="needs iproute2 (ip, tc)"),
]
OPTS = EndpointOptions(heartbeat_s=0.1, peer_timeout_s=1.0, linger_s=0.5)


def sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


@dataclass
class Link:
    ns: str
    dev: str  # root-side veth
    local: str  # 10.77.N.1 (root side)
    remote: str  # 10.77.N.2 (inside ns)
    shaping: str


def _shape(dev: str, ns: str | None, rate: str, delay_ms: int) -> str:
    pre = ["ip", "netns", "exec", ns] if ns else []
    try:
        sh(*pre, "tc", "qdisc", "add", "dev", dev, "root", "netem", "rate", rate, "delay", f"{delay_ms}ms")
        return f"netem rate {rate} delay {delay_ms}ms"
    except subprocess.CalledProcessError:  # kernel without sch_netem: bandwidth only
        sh(*pre, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "64kb", "latency", "100ms")
        return f"tbf rate {rate} (no netem in this kernel: no added delay)"


@pytest.fixture
def make_link() -> Iterator[Callable[[str, int], Link]]:
    made: list[str] = []
    tag = f"{os.getpid() % 10000}"

    def make(rate: str, delay_ms: int) -> Link:
        i = len(made)
        ns, dev, peer_dev = f"hxt{tag}n{i}", f"hxt{tag}a{i}", f"hxt{tag}b{i}"
        subnet = 100 + (os.getpid() + i) % 150
        local, remote = f"10.77.{subnet}.1", f"10.77.{subnet}.2"
        sh("ip", "netns", "add", ns)
        made.append(ns)
        sh("ip", "link", "add", dev, "type", "veth", "peer", "name", peer_dev)
        sh("ip", "link", "set", peer_dev, "netns", ns)
        sh("ip", "addr", "add", f"{local}/24", "dev", dev)
        sh("ip", "link", "set", dev, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{remote}/24", "dev", peer_dev)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", peer_dev, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        shaping = _shape(dev, None, rate, delay_ms)
        _shape(peer_dev, ns, rate, delay_ms)
        return Link(ns, dev, local, remote, shaping)

    yield make
    for ns in made:  # deleting the namespace deletes its veth pair too
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def echo_rtt(ep: Endpoint, peer: str, payload: np.ndarray) -> float:
    t0 = time.monotonic()
    ep.send(peer, Header("hello", meta={"reply_to": ep.address}), [payload])
    m = ep.recv(timeout=10)
    dt = time.monotonic() - t0
    assert m.sender == peer and np.array_equal(np.frombuffer(m.payloads[0], dtype=payload.dtype), payload)
    return dt


def wait_alive(ep: Endpoint, peer: str, within_s: float = 2.0) -> None:
    deadline = time.monotonic() + within_s
    while ep.peers()[peer] != "alive" and time.monotonic() < deadline:
        with contextlib.suppress(TransportTimeout, PeerLost):
            ep.recv(timeout=0.1)
    assert ep.peers()[peer] == "alive"


@pytest.mark.slow
def test_messages_cross_heterogeneous_links_at_their_speed(make_link) -> None:
    slow, fast = make_link("100mbit", 20), make_link("1gbit", 2)
    payload = np.random.default_rng(0).integers(0, 2**31, (2 << 20) // 4, dtype=np.int32)  # 2 MiB
    procs = []
    try:
        with Endpoint("coord", f"tcp://{slow.local}:*", options=OPTS) as ep:
            ep_fast = Endpoint("coord2", f"tcp://{fast.local}:*", options=OPTS)
            for name, link, e in (("w-slow", slow, ep), ("w-fast", fast, ep_fast)):
                proc, addr = start_peer(name, f"tcp://{link.remote}:*", "0.1", "1.0", netns=link.ns)
                procs.append(proc)
                e.connect(name, addr)
            echo_rtt(ep, "w-slow", payload[:16])  # warm up: connect + connect back
            echo_rtt(ep_fast, "w-fast", payload[:16])
            t_slow = echo_rtt(ep, "w-slow", payload)
            t_fast = echo_rtt(ep_fast, "w-fast", payload)
            ep_fast.close()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    # 2 MiB each way at 100 Mbit/s is >= 0.34 s; at 1 Gbit/s ~0.04 s
    assert t_slow > 0.3, (t_slow, slow.shaping)
    assert t_slow > 3 * t_fast, (t_slow, t_fast, slow.shaping)


@pytest.mark.slow
def test_cut_link_is_reported_as_peer_loss_and_heals(make_link) -> None:
    link = make_link("100mbit", 10)
    proc, addr = start_peer("worker", f"tcp://{link.remote}:*", "0.1", "1.0", netns=link.ns)
    try:
        with Endpoint("coord", f"tcp://{link.local}:*", options=OPTS) as ep:
            ep.connect("worker", addr)
            echo_rtt(ep, "worker", np.arange(1000, dtype=np.float32))
            wait_alive(ep, "worker")
            sh("ip", "link", "set", link.dev, "down")
            t0 = time.monotonic()
            with pytest.raises(PeerLost) as e:
                ep.recv(timeout=5)
            assert e.value.peer == "worker" and time.monotonic() - t0 < 3.0
            with pytest.raises(PeerLost):
                ep.send("worker", Header("x"))
            sh("ip", "link", "set", link.dev, "up")
            wait_alive(ep, "worker", within_s=10)
            for _ in range(10):  # the worker's own link back to us may heal a moment later
                try:
                    ep.send("worker", Header("again"), [b"back"])
                    if bytes(ep.recv(timeout=1.0).payloads[0]) == b"back":
                        break
                except (TransportTimeout, PeerLost):
                    pass
            else:
                pytest.fail("no echo within 10 s after the link came back")
    finally:
        proc.kill()
        proc.wait()
