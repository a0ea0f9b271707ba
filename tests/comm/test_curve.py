"""CURVE: encrypted links between allowed peers; unknown keys and plain-text peers are refused."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from vllm_helix.comm import CurveKeys, Endpoint, EndpointOptions, Header
from vllm_helix.comm import _transport as T
from vllm_helix.comm.endpoint import warn_if_exposed
from vllm_helix.errors import PeerLost, TransportTimeout

pytestmark = pytest.mark.skipif(not T.has_curve(), reason="libzmq was built without CURVE (libsodium)")
OPTS = EndpointOptions(heartbeat_s=0.05, peer_timeout_s=0.8, linger_s=0.2)


def test_allowed_peer_talks_both_ways_encrypted() -> None:
    ka, kb = CurveKeys.generate(), CurveKeys.generate()
    ka = CurveKeys(ka.public, ka.secret, (kb.public,))
    kb = CurveKeys(kb.public, kb.secret, (ka.public,))
    with Endpoint("a", options=OPTS, curve=ka) as a, Endpoint("b", options=OPTS, curve=kb) as b:
        a.connect("b", b.address, public_key=kb.public)
        b.connect("a", a.address, public_key=ka.public)
        a.send("b", Header("x"), [np.arange(100_000, dtype=np.int64)])
        assert np.array_equal(np.frombuffer(b.recv(timeout=3).payloads[0], dtype=np.int64), np.arange(100_000))
        b.send("a", Header("y"))
        assert a.recv(timeout=3).header.kind == "y"
        assert a.stats()["auth_denied"] == b.stats()["auth_denied"] == 0


def test_unknown_key_is_refused_and_the_sender_sees_the_peer_lost() -> None:
    server_keys = CurveKeys.generate()
    friend, stranger = CurveKeys.generate(), CurveKeys.generate((server_keys.public,))
    server_keys = CurveKeys(server_keys.public, server_keys.secret, (friend.public,))
    with (
        Endpoint("srv", options=OPTS, curve=server_keys) as srv,
        Endpoint("stranger", options=OPTS, curve=stranger) as bad,
    ):
        bad.connect("srv", srv.address, public_key=server_keys.public)
        bad.send("srv", Header("let me in"))
        with pytest.raises(TransportTimeout):
            srv.recv(timeout=0.5)
        assert srv.stats()["auth_denied"] >= 1
        with pytest.raises(PeerLost, match="srv"):
            bad.recv(timeout=2)


def test_a_rotated_peer_is_reached_again_after_rekey() -> None:
    old, new, client = CurveKeys.generate(), CurveKeys.generate(), CurveKeys.generate()
    allow_client = (client.public,)
    with Endpoint("srv", options=OPTS, curve=CurveKeys(old.public, old.secret, allow_client)) as srv:
        address = srv.address
    srv_keys = CurveKeys(new.public, new.secret, allow_client)  # the same peer restarted with a rotated key
    with (
        Endpoint("srv", address, options=OPTS, curve=srv_keys) as srv,
        Endpoint("c", options=OPTS, curve=CurveKeys(client.public, client.secret, (new.public,))) as c,
    ):
        c.connect("srv", address, public_key=old.public)  # what it knew before the rotation
        with pytest.raises((PeerLost, TransportTimeout)):
            c.send("srv", Header("to the old key"))
            srv.recv(timeout=1.0)
        c.rekey("srv", new.public)
        deadline = time.monotonic() + 5
        while True:  # the link is re-dialled: sends go through once the handshake with the new key is done
            try:
                c.send("srv", Header("to the new key"))
                break
            except PeerLost:
                assert time.monotonic() < deadline, "never reached the rotated peer"
                time.sleep(0.1)
        assert srv.recv(timeout=3).header.kind == "to the new key"
        with pytest.raises(ValueError, match="unknown peer"):
            c.rekey("nobody", new.public)


def test_plain_text_peer_cannot_reach_a_curve_endpoint() -> None:
    keys = CurveKeys.generate((CurveKeys.generate().public,))
    with Endpoint("srv", options=OPTS, curve=keys) as srv, Endpoint("plain", options=OPTS) as plain:
        plain.connect("srv", srv.address)
        plain.send("srv", Header("hello"))
        with pytest.raises(TransportTimeout):
            srv.recv(timeout=0.5)
        with pytest.raises(PeerLost):
            plain.recv(timeout=2)


def test_curve_configuration_errors_are_clear() -> None:
    keys = CurveKeys.generate()
    with pytest.raises(ValueError, match="allowed_peers"):
        Endpoint("x", options=OPTS, curve=keys)
    with pytest.raises(ValueError, match="Z85"):
        Endpoint("x", options=OPTS, curve=CurveKeys("short", keys.secret, (keys.public,)))
    curve_on = CurveKeys(keys.public, keys.secret, (keys.public,))
    with Endpoint("x", options=OPTS, curve=curve_on) as ep, pytest.raises(ValueError, match="needs the peer's"):
        ep.connect("y", "tcp://127.0.0.1:9")
    with Endpoint("p", options=OPTS) as ep, pytest.raises(ValueError, match="no CURVE keys"):
        ep.connect("y", "tcp://127.0.0.1:9", public_key=keys.public)


@pytest.mark.parametrize(
    ("address", "warns"),
    [
        ("tcp://127.0.0.1:5555", False),
        ("tcp://10.77.0.2:5555", False),
        ("tcp://192.168.1.4:1", False),
        ("tcp://localhost:5555", False),
        ("tcp://8.8.8.8:5555", True),
        ("tcp://*:5555", True),
        ("tcp://0.0.0.0:5555", True),
        ("tcp://[2001:4860::8888]:1", True),
    ],
)
def test_plain_tcp_on_a_public_address_warns(address: str, warns: bool) -> None:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        warn_if_exposed(address, encrypted=False)
        warn_if_exposed(address, encrypted=True)
    assert len(w) == int(warns)
    if warns:
        assert "CurveKeys" in str(w[0].message)


def test_refused_peer_is_reported_once_per_address_and_rotation_refuses_the_old_key() -> None:
    old, new = CurveKeys.generate(), CurveKeys.generate()
    server = CurveKeys.generate()
    server = CurveKeys(server.public, server.secret, (old.public,))
    with Endpoint("srv", options=OPTS, curve=server) as srv:
        with Endpoint("n", options=OPTS, curve=CurveKeys(new.public, new.secret, (server.public,))) as n:
            n.connect("srv", srv.address, public_key=server.public)
            n.send("srv", Header("before rotation"))
            with pytest.raises(TransportTimeout):
                srv.recv(timeout=1.0)  # libzmq re-dials: several refusals, one report
            denied = srv.take_denied()
            assert denied == [("127.0.0.1", new.public)] and srv.stats()["auth_denied"] >= 1
            assert srv.take_denied() == []
        srv.set_allowed([new.public])  # rotation: the new key in, the old one out
        with Endpoint("n", options=OPTS, curve=CurveKeys(new.public, new.secret, (server.public,))) as n:
            n.connect("srv", srv.address, public_key=server.public)
            n.send("srv", Header("after rotation"))
            assert srv.recv(timeout=3).header.kind == "after rotation"
        with Endpoint("o", options=OPTS, curve=CurveKeys(old.public, old.secret, (server.public,))) as o:
            o.connect("srv", srv.address, public_key=server.public)
            o.send("srv", Header("old key"))
            with pytest.raises(TransportTimeout):
                srv.recv(timeout=1.0)


def test_public_key_is_derived_from_the_secret() -> None:
    keys = CurveKeys.generate()
    assert CurveKeys.from_secret(keys.secret).public == keys.public
    with pytest.raises(ValueError, match="Z85"):
        CurveKeys.from_secret("not a key")
