"""Hostile input on the wire: a raw pyzmq socket sends bad messages; each one is an error, the endpoint lives on."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
import zmq
from comm_helpers import FAST

from vllm_helix.comm import Endpoint, EndpointOptions, Header
from vllm_helix.comm import _transport as T
from vllm_helix.comm.messages import encode_header
from vllm_helix.errors import FrameRejected, PeerLost, TransportTimeout

LIMITED = EndpointOptions(
    heartbeat_s=0.05, peer_timeout_s=5.0, max_header_bytes=256, max_payload_bytes=64 << 10, max_payloads=4
)


@pytest.fixture
def target() -> Iterator[tuple[Endpoint, zmq.Socket]]:
    """A C++ endpoint and a raw DEALER (routing id "evil") connected to it."""
    ep = Endpoint("target", options=LIMITED)
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.routing_id = b"evil"
    raw.linger = 0
    raw.connect(ep.address)
    yield ep, raw
    raw.close()
    ctx.term()
    ep.close()


def good(i: int) -> list[bytes]:
    hdr = encode_header(Header("ok", meta={"i": i}))
    return [T.encode_first(0, [3], hdr), b"abc"]


BAD = {
    "garbage": [b"hello world, not a frame"],
    "empty first frame": [b""],
    "wrong wire version": [b"HX\x09\x00" + bytes(12)],
    "truncated payload": [T.encode_first(0, [10], b""), b"short"],
    "missing payload": [T.encode_first(0, [3, 3], b""), b"abc"],
    "extra payload": [T.encode_first(0, [3], b""), b"abc", b"def"],
    "oversized payload": [T.encode_first(0, [100 << 10], b""), bytes(100 << 10)],
    "oversized header": [T.encode_first(0, [], bytes(300))],
    "too many payloads": [T.encode_first(0, [1] * 5, b"")] + [b"x"] * 5,
    "frame flood": [T.encode_first(0, [1], b"")] + [b"x"] * 500,
    "bad msgspec header": [T.encode_first(0, [], b"\xc1\xc1")],
    "header of version 7": [T.encode_first(0, [], encode_header(Header("x", version=7)))],
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_message_is_one_error_then_the_next_message_arrives(target, name: str) -> None:
    ep, raw = target
    raw.send_multipart(BAD[name])
    raw.send_multipart(good(1))
    with pytest.raises(FrameRejected) as e:
        ep.recv(timeout=2)
    assert e.value.peer == "evil"
    m = ep.recv(timeout=2)
    assert (m.sender, m.header.meta, bytes(m.payloads[0])) == ("evil", {"i": 1}, b"abc")


def test_frame_beyond_twice_the_limit_is_cut_at_the_wire_and_counted_nowhere_else(target) -> None:
    ep, raw = target
    raw.send_multipart([T.encode_first(0, [1 << 20], b""), bytes(1 << 20)])  # libzmq drops this connection
    with pytest.raises(TransportTimeout):
        ep.recv(timeout=0.3)
    with Endpoint("friend", options=FAST) as friend:  # others are unaffected
        friend.connect("target", ep.address)
        friend.send("target", Header("hi"))
        assert ep.recv(timeout=2).sender == "friend"


def test_random_wire_traffic_never_kills_the_endpoint(target) -> None:
    ep, raw = target
    rng = random.Random(1234)
    valid = good(0)
    sent_good = 0
    for i in range(3000):
        frames = [bytearray(f) for f in valid]
        for _ in range(rng.randint(1, 4)):  # mutate: flip bytes, cut, append, add or drop frames
            f = rng.choice(frames)
            op = rng.randrange(5)
            if op == 0 and f:
                f[rng.randrange(len(f))] = rng.randrange(256)
            elif op == 1:
                del f[rng.randrange(len(f) + 1) :]
            elif op == 2:
                f.extend(rng.randbytes(rng.randint(1, 40)))
            elif op == 3:
                frames.append(bytearray(rng.randbytes(rng.randint(0, 20))))
            elif len(frames) > 1:
                frames.pop()
        raw.send_multipart([bytes(f) for f in frames])
        if i % 100 == 0:
            raw.send_multipart(good(i))
            sent_good += 1
    got_good = errors = 0
    deadline = time.monotonic() + 20
    while got_good < sent_good and time.monotonic() < deadline:
        try:
            m = ep.recv(timeout=2)
            got_good += m.header.kind == "ok" and bytes(m.payloads[0]) == b"abc"
        except FrameRejected:
            errors += 1
    assert got_good >= sent_good  # mutants may happen to be valid too
    assert ep.stats()["rejected"] > 1000


def test_senders_without_a_name_of_their_own_are_dropped_and_odd_names_never_crash_recv() -> None:
    """libzmq names a connection itself (a NUL byte and a counter) when the peer set no routing id, or when the
    peer dialled again on a fresh socket and the handover renamed the stale connection: not a peer of ours.
    A named peer whose name is not UTF-8 is still reported, its name decoded leniently."""
    with Endpoint("target", options=LIMITED) as ep:
        ctx = zmq.Context()
        try:
            anonymous, odd = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
            odd.routing_id = b"\xff\x8b-odd"
            for s in (anonymous, odd):
                s.linger = 0
                s.connect(ep.address)
            anonymous.send_multipart(good(1))
            anonymous.send_multipart(BAD["garbage"])
            odd.send_multipart(BAD["garbage"])
            odd.send_multipart(good(2))
            with pytest.raises(FrameRejected) as e:
                ep.recv(timeout=2)
            assert e.value.peer == "\ufffd\ufffd-odd"
            m = ep.recv(timeout=2)
            assert (m.sender, m.header.meta) == ("\ufffd\ufffd-odd", {"i": 2})
            with pytest.raises(PeerLost) as lost:  # the odd one sends no heartbeats: silent, so lost
                ep.recv(timeout=LIMITED.peer_timeout_s + 2)
            assert lost.value.peer == "\ufffd\ufffd-odd"
            with pytest.raises(TransportTimeout):  # nothing of the anonymous socket's, no loss event for it
                ep.recv(timeout=1)
            assert ep.stats()["rejected"] >= 3
        finally:
            for s in (anonymous, odd):
                s.close()
            ctx.term()
