"""Multi-host transport over real (virtual) links: network namespaces, veth pairs, shaped with tc.

Each host (tests/netns_hosts.py) is a namespace holding an echo peer, joined to the root namespace
(this test) by a veth link shaped with `netem rate R delay D` where the kernel has netem, otherwise
with `tbf rate R` (bandwidth only; the test says which). A cut link (`ip link set down`) must
surface as PeerLost, and the peer must come back when the link does.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
from comm_helpers import start_peer
from netns_hosts import NEEDS_ROOT, sh, sniff

from vllm_helix.comm import CurveKeys, Endpoint, EndpointOptions, Header
from vllm_helix.errors import PeerLost, TransportTimeout

pytestmark = NEEDS_ROOT
OPTS = EndpointOptions(heartbeat_s=0.1, peer_timeout_s=1.0, linger_s=0.5)


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
def test_messages_cross_heterogeneous_links_at_their_speed(make_host) -> None:
    slow, fast = make_host("100mbit", 20), make_host("1gbit", 2)
    payload = np.random.default_rng(0).integers(0, 2**31, (2 << 20) // 4, dtype=np.int32)  # 2 MiB
    procs = []
    try:
        with Endpoint("coord", f"tcp://{slow.gateway}:*", options=OPTS) as ep:
            ep_fast = Endpoint("coord2", f"tcp://{fast.gateway}:*", options=OPTS)
            for name, link, e in (("w-slow", slow, ep), ("w-fast", fast, ep_fast)):
                proc, addr = start_peer(name, f"tcp://{link.address}:*", "0.1", "1.0", netns=link.ns)
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
def test_cut_link_is_reported_as_peer_loss_and_heals(make_host) -> None:
    link = make_host("100mbit", 10)
    proc, addr = start_peer("worker", f"tcp://{link.address}:*", "0.1", "1.0", netns=link.ns)
    try:
        with Endpoint("coord", f"tcp://{link.gateway}:*", options=OPTS) as ep:
            ep.connect("worker", addr)
            echo_rtt(ep, "worker", np.arange(1000, dtype=np.float32))
            wait_alive(ep, "worker")
            sh("ip", "link", "set", link.root_dev, "down")
            t0 = time.monotonic()
            with pytest.raises(PeerLost) as e:
                ep.recv(timeout=5)
            assert e.value.peer == "worker" and time.monotonic() - t0 < 3.0
            with pytest.raises(PeerLost):
                ep.send("worker", Header("x"))
            sh("ip", "link", "set", link.root_dev, "up")
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


def test_an_eavesdropper_on_the_link_reads_plain_tcp_but_not_curve(make_host) -> None:
    """The check the serving test relies on, shown to see plain text: the same bytes cross the link twice."""
    link = make_host("1gbit", 1)
    secret_bytes = np.frombuffer(b"activation row 42 " * 512, dtype=np.uint8)
    seen = {}
    for mode in ("plain", "curve"):
        me, peer = CurveKeys.generate(), CurveKeys.generate()
        args = [peer.secret, me.public] if mode == "curve" else []
        proc, addr = start_peer("worker", f"tcp://{link.address}:*", "0.1", "1.0", *args, netns=link.ns)
        mine = CurveKeys(me.public, me.secret, (peer.public,)) if mode == "curve" else None
        try:
            with Endpoint("coord", f"tcp://{link.gateway}:*", options=OPTS, curve=mine) as ep, \
                    sniff(link.root_dev) as wire:
                ep.connect("worker", addr, peer.public if mine else None)
                echo_rtt(ep, "worker", secret_bytes)
            seen[mode] = bytes(wire)  # complete once the sniffer stopped
        finally:
            proc.kill()
            proc.wait()
    assert len(seen["curve"]) > 2 * secret_bytes.nbytes  # both directions crossed the link
    assert b"activation row 42" in seen["plain"] and b"hello" in seen["plain"]
    assert b"activation row 42" not in seen["curve"] and b"hello" not in seen["curve"]
    assert b"CURVE" in seen["curve"]  # the handshake names its mechanism; everything after it is sealed
