"""The C++ endpoint on loopback: delivery, zero-copy both ways, timeouts, back-pressure, peer loss, shutdown."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from comm_helpers import FAST, start_peer

from vllm_helix.comm import Endpoint, EndpointOptions, Header, tensor_spec
from vllm_helix.errors import FrameRejected, HelixError, PeerLost, TransportTimeout


def test_message_crosses_with_numpy_torch_and_bytes_payloads(pair) -> None:
    a, b = pair
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = torch.randn(5, 7, dtype=torch.bfloat16)
    a.send("b", Header("step", request_ids=("r1",), tensors=(tensor_spec(x), tensor_spec(t))), [x, t, b"raw"])
    m = b.recv(timeout=2)
    assert (m.sender, m.header.kind, m.header.request_ids) == ("a", "step", ("r1",))
    assert np.array_equal(m.array(0), x)
    assert torch.equal(m.tensor(1), t)
    assert bytes(m.payloads[2]) == b"raw"


def test_receive_views_share_the_message_memory(pair) -> None:
    a, b = pair
    a.send("b", Header("x"), [np.zeros(100_000, dtype=np.float32)])
    p = b.recv(timeout=2).payloads[0]
    v1, v2 = np.frombuffer(p, dtype=np.float32), torch.frombuffer(p, dtype=torch.float32)
    v1[7] = 42.0
    assert v2[7].item() == 42.0  # two views, one buffer: nothing was copied


def test_large_send_pins_the_buffer_until_sent_then_releases_it(pair) -> None:
    a, b = pair
    big = np.ones(1 << 20, dtype=np.uint8)  # above copy_below: goes zero-copy
    before = sys.getrefcount(big)
    a.send("b", Header("x"), [big])
    assert sys.getrefcount(big) == before + 1  # held by the transport, not copied
    b.recv(timeout=2)
    deadline = time.monotonic() + 2
    while sys.getrefcount(big) > before and time.monotonic() < deadline:
        a.stats()
        with pytest.raises(TransportTimeout):
            a.recv(timeout=0.01)  # any call drains released buffers
    assert sys.getrefcount(big) == before


def test_many_messages_arrive_in_order(pair) -> None:
    a, b = pair
    for i in range(2000):
        a.send("b", Header("seq", meta={"i": i}), [np.full(64, i % 256, dtype=np.uint8)])
    got = [b.recv(timeout=2) for _ in range(2000)]
    assert [m.header.meta["i"] for m in got] == list(range(2000))
    assert all(bytes(m.payloads[0])[0] == i % 256 for i, m in enumerate(got))


def test_bad_input_gets_clear_errors(pair) -> None:
    a, _ = pair
    with pytest.raises(ValueError, match="unknown peer 'nobody'"):
        a.send("nobody", Header("x"))
    with pytest.raises(ValueError, match="contiguous"):
        a.send("b", Header("x"), [torch.zeros(4, 4).t()])
    with pytest.raises(ValueError, match="contiguous"):
        a.send("b", Header("x"), [np.zeros((4, 4))[:, 1]])
    with pytest.raises(ValueError, match="payload 1 is not a C-contiguous buffer"):
        a.send("b", Header("x"), [b"ok", object()])
    with pytest.raises(ValueError, match="already connected"):
        a.connect("b", "tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="exceed max_payloads"):
        a.send("b", Header("x"), [b"x"] * 65)
    with pytest.raises(ValueError, match="name"):
        Endpoint("", options=FAST)
    with pytest.raises(HelixError, match="bind"):
        Endpoint("z", "tcp://256.1.1.1:1", options=FAST)
    with pytest.raises(ValueError, match="peer_timeout_s"):
        Endpoint("z", options=EndpointOptions(heartbeat_s=1, peer_timeout_s=0.5))


def test_recv_times_out_and_releases_the_gil(pair) -> None:
    a, _ = pair
    ticks = []
    t = threading.Thread(target=lambda: [ticks.append(1) or time.sleep(0.001) for _ in range(50)])
    t0 = time.monotonic()
    t.start()
    with pytest.raises(TransportTimeout):
        a.recv(timeout=0.3)
    t.join()
    assert 0.25 < time.monotonic() - t0 < 1.5
    assert len(ticks) == 50  # the other thread ran while we were blocked


def test_a_zero_timeout_looks_without_waiting_and_takes_what_is_queued(pair) -> None:
    """A node's batch ends with recv(0): nothing queued is a timeout at once, a queued message is returned."""
    a, b = pair
    with pytest.raises(TransportTimeout):
        b.recv(timeout=0)
    a.send("b", Header("queued"), [b"x"])
    deadline, got = time.monotonic() + 5, None
    while got is None and time.monotonic() < deadline:
        with contextlib.suppress(TransportTimeout):
            got = b.recv(timeout=0)
    assert got is not None and got.header.kind == "queued"
    assert b._ep.recv(0.0) is None  # the C++ call itself: None, not a wait


def test_back_pressure_blocks_the_sender_and_loses_nothing() -> None:
    small = EndpointOptions(heartbeat_s=0.05, peer_timeout_s=2.0, send_queue_msgs=4, recv_queue_msgs=4, zmq_hwm_msgs=4)
    with Endpoint("rx", options=small) as rx, Endpoint("tx", options=small) as tx:
        tx.connect("rx", rx.address)
        payload = np.zeros(256 << 10, dtype=np.uint8)  # fills socket buffers quickly
        sent = 0
        with pytest.raises(TransportTimeout, match="queue still full"):
            for sent in range(10_000):  # noqa: B007
                tx.send("rx", Header("x", meta={"i": sent}), [payload], timeout=0.3)
        assert 8 <= sent < 500  # bounded: our queues + libzmq's + the kernel's
        got = [rx.recv(timeout=2).header.meta["i"] for _ in range(sent)]
        assert got == list(range(sent))
        assert tx.peers() == {"rx": "alive"}  # a slow receiver is not a lost one


def test_clean_close_is_reported_to_the_peer_at_once(pair) -> None:
    a, b = pair
    t0 = time.monotonic()
    a.close()
    with pytest.raises(PeerLost, match="closed") as e:
        b.recv(timeout=2)
    assert e.value.peer == "a"
    assert time.monotonic() - t0 < 0.5  # well before peer_timeout_s
    with pytest.raises(PeerLost):
        b.send("a", Header("x"))
    with pytest.raises(HelixError, match="closed"):
        a.send("b", Header("x"))
    a.close()  # idempotent


def _wait_state(ep: Endpoint, peer: str, state: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while ep.peers()[peer] != state and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ep.peers()[peer] == state


def _next_hello(ep: Endpoint):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with contextlib.suppress(PeerLost):  # the loss, reported once as it happened
            if (m := ep.recv(timeout=5)).header.kind == "hello":
                return m
    raise AssertionError("no echo")


def _echo(me: Endpoint, peer: str, data: bytes) -> bytes:
    me.send(peer, Header("hello", meta={"reply_to": me.address}), [data])
    return bytes(_next_hello(me).payloads[0])


def test_killed_peer_is_reported_on_send_and_recv() -> None:
    proc, addr = start_peer("victim", "tcp://127.0.0.1:*")
    with Endpoint("me", options=FAST) as me:
        me.connect("victim", addr)
        assert _echo(me, "victim", b"ping") == b"ping"
        proc.kill()
        proc.wait()
        with pytest.raises(PeerLost) as e:
            me.recv(timeout=3)
        assert e.value.peer == "victim"  # first report: as a sender (its messages stopped) or as a peer
        _wait_state(me, "victim", "lost", 2)
        assert me.peers() == {"victim": "lost"}
        with pytest.raises(PeerLost, match="victim"):
            me.send("victim", Header("x"))


def test_a_killed_peer_restarted_at_its_address_is_alive_again_and_reachable() -> None:
    proc, addr = start_peer("victim", "tcp://127.0.0.1:*")
    with Endpoint("me", options=FAST) as me:
        me.connect("victim", addr)
        assert _echo(me, "victim", b"one") == b"one"
        for round_ in range(3):  # lost, then back, again and again: the link heals each time
            proc.kill()
            proc.wait()
            _wait_state(me, "victim", "lost", 5)
            proc, _ = start_peer("victim", addr)
            _wait_state(me, "victim", "alive", 5)
            assert _echo(me, "victim", b"again") == b"again", round_
        proc.stdin.close()
        proc.wait(5)


def test_redial_gives_a_lost_peer_a_fresh_link_that_carries_the_next_message() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    with Endpoint("me", options=FAST) as me:
        me.connect("late", addr)
        _wait_state(me, "late", "lost", 5)
        with pytest.raises(PeerLost):
            me.send("late", Header("x"))
        me.redial("late")  # e.g. it said Hello: it is up, whatever our link thought
        assert me.peers()["late"] == "connecting"
        me.send("late", Header("x"), [b"queued"])  # held for the new link
        with Endpoint("late", addr, options=FAST) as late:
            m = late.recv(timeout=5)
            assert (m.sender, bytes(m.payloads[0])) == ("me", b"queued")
        with pytest.raises(ValueError, match="unknown peer"):
            me.redial("nobody")


def test_connecting_to_nobody_is_reported_as_lost() -> None:
    with Endpoint("me", options=FAST) as me:
        me.connect("ghost", "tcp://127.0.0.1:9")
        assert me.peers() == {"ghost": "connecting"}
        with pytest.raises(PeerLost, match="ghost"):
            me.recv(timeout=3)


def test_exit_without_close_mid_traffic_is_clean() -> None:
    code = textwrap.dedent("""
        import numpy as np
        from vllm_helix.comm import Endpoint, EndpointOptions, Header
        o = EndpointOptions(heartbeat_s=0.05, peer_timeout_s=0.5, linger_s=0.2)
        a, b = Endpoint("a", options=o), Endpoint("b", options=o)
        a.connect("b", b.address); b.connect("a", a.address)
        a.connect("ghost", "tcp://127.0.0.1:9")
        big = np.ones(4 << 20, dtype=np.uint8)
        for i in range(20):
            a.send("b", Header("x"), [big])
            a.send("ghost", Header("x"), [big])
        m = b.recv(timeout=5)
        keep = [m.payloads[0], np.frombuffer(m.payloads[0], dtype=np.uint8)]
        print("ok", flush=True)
    """)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr
    assert time.monotonic() - t0 < 20


def test_recv_many_drains_in_order_and_keeps_what_follows_a_bad_header(pair) -> None:
    a, b = pair
    for i in range(50):
        a.send("b", Header("seq", meta={"i": i}), [b"x"])
    a._ep.send("b", b"\xc1not msgpack", [], 1.0)  # a header only the Python layer can reject
    a.send("b", Header("seq", meta={"i": 50}))
    got: list[int] = []
    while len(got) < 50:
        got += [m.header.meta["i"] for m in b.recv_many(max_n=16, timeout=2)]
    assert got == list(range(50))
    with pytest.raises(FrameRejected, match="malformed message header"):
        b.recv_many(timeout=2)
    assert [m.header.meta["i"] for m in b.recv_many(timeout=2)] == [50]
