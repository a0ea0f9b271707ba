"""Endpoint: send to named peers, receive from any — the typed face of the C++ transport (`_transport`).

    with Endpoint("coord", "tcp://127.0.0.1:*") as ep:
        ep.connect("w0", "tcp://10.0.0.2:5555")
        ep.send("w0", Header(kind="step"), [hidden_states])
        msg = ep.recv(timeout=5.0)

Blocking calls release the GIL and wait in short slices, so Ctrl-C works while waiting.
"""

from __future__ import annotations

import atexit
import ipaddress
import socket
import time
import warnings
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FrameRejected, TransportTimeout
from . import _transport
from .messages import Header, Message, as_buffer, decode_header, encode_header, typed_decoder

_SLICE_S = 0.25  # longest wait inside C++ before Python checks for signals
_live: weakref.WeakSet[Endpoint] = weakref.WeakSet()
_PLAIN = {bytes, bytearray, memoryview, np.ndarray, _transport.Payload}  # buffers needing no conversion


@dataclass(frozen=True, slots=True)
class EndpointOptions:
    """Tuning knobs; defaults suit a LAN. Sizes in bytes, times in seconds."""

    heartbeat_s: float = 0.5
    peer_timeout_s: float = 3.0  # > time to move the largest message over the slowest link
    linger_s: float = 1.0
    send_queue_msgs: int = 1024
    send_queue_bytes: int = 256 << 20
    recv_queue_msgs: int = 4096
    recv_queue_bytes: int = 256 << 20
    zmq_hwm_msgs: int = 1000
    copy_below: int = 64 << 10
    max_header_bytes: int = 64 << 10
    max_payload_bytes: int = 1 << 30
    max_payloads: int = 64


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """CURVE identity of this endpoint plus the public keys allowed to send to it (all Z85 text)."""

    public: str
    secret: str
    allowed_peers: tuple[str, ...] = field(default=())

    @staticmethod
    def generate(allowed_peers: Sequence[str] = ()) -> CurveKeys:
        public, secret = _transport.curve_keypair()
        return CurveKeys(public, secret, tuple(allowed_peers))

    @staticmethod
    def from_secret(secret: str, allowed_peers: Sequence[str] = ()) -> CurveKeys:
        """The identity of a secret key (its public key is derived from it)."""
        return CurveKeys(_transport.curve_public(secret), secret, tuple(allowed_peers))


def _native_options(o: EndpointOptions, curve: CurveKeys | None) -> _transport.Options:
    n = _transport.Options()
    for name in (
        "heartbeat_s",
        "peer_timeout_s",
        "linger_s",
        "send_queue_msgs",
        "send_queue_bytes",
        "recv_queue_msgs",
        "recv_queue_bytes",
        "zmq_hwm_msgs",
        "copy_below",
    ):
        setattr(n, name, getattr(o, name))
    lim = _transport.Limits()
    lim.max_header_bytes, lim.max_payload_bytes, lim.max_payloads = (
        o.max_header_bytes,
        o.max_payload_bytes,
        o.max_payloads,
    )
    n.limits = lim
    if curve is not None:
        if not curve.allowed_peers:
            raise ValueError("CURVE needs allowed_peers: the public keys of the peers that may send to this endpoint")
        n.curve_public, n.curve_secret, n.curve_allow = curve.public, curve.secret, list(curve.allowed_peers)
    return n


def warn_if_exposed(address: str, encrypted: bool) -> None:
    """Warn when plain TCP would carry data over a non-loopback, non-private address."""
    if encrypted or not address.startswith("tcp://"):
        return
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host in ("*", "0.0.0.0", "::"):
        exposed = True
    else:
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                ips = [ipaddress.ip_address(a[4][0]) for a in socket.getaddrinfo(host, None)]
            except OSError:
                ips = []
        exposed = any(not (ip.is_loopback or ip.is_private or ip.is_link_local) for ip in ips)
    if exposed:
        warnings.warn(
            f"plain TCP on {address} may leave the private network: pass curve=CurveKeys(...) "
            "to encrypt and authenticate",
            RuntimeWarning,
            stacklevel=3,
        )


class Endpoint:
    """One node of the data plane: binds a receiving socket, sends to peers named with connect()."""

    def __init__(
        self,
        name: str,
        bind: str = "tcp://127.0.0.1:*",
        *,
        options: EndpointOptions | None = None,
        curve: CurveKeys | None = None,
        header_type: type[Header] | None = None,
    ) -> None:
        """`header_type`: a Header subclass with the caller's own `meta` struct, decoded in one pass."""
        self.options = options or EndpointOptions()
        self._typed = typed_decoder(header_type)
        self._curve = curve is not None
        warn_if_exposed(bind, self._curve)
        self._ep = _transport.Endpoint(name, bind, _native_options(self.options, curve))
        self._pending: deque[tuple[str, bytes, list[Any], float]] = deque()  # batch left over by recv_many
        _live.add(self)

    @property
    def name(self) -> str:
        return self._ep.name

    @property
    def address(self) -> str:
        """Address peers connect to (the bound port resolved)."""
        return self._ep.address

    def connect(self, peer: str, address: str, public_key: str | None = None) -> None:
        """Add `peer` to the peer table (its public key is required when CURVE is on)."""
        warn_if_exposed(address, self._curve)
        self._ep.connect(peer, address, public_key or "")

    def send(self, peer: str, header: Header, payloads: Sequence[Any] = (), timeout: float | None = None) -> None:
        """Queue a message; payloads (tensors, arrays, bytes) are not copied and must not change until sent.

        Raises PeerLost, TransportTimeout (queue full: back-pressure), ValueError (unknown peer, too big).
        """
        hdr = encode_header(header)
        bufs = [p if type(p) in _PLAIN else as_buffer(p) for p in payloads]
        first = _SLICE_S if timeout is None or timeout > _SLICE_S else max(0.0, timeout)
        if not self._ep.send(peer, hdr, bufs, first):  # fast path: one C++ call
            self._send_slow(peer, hdr, bufs, timeout)

    def _send_slow(self, peer: str, hdr: bytes, bufs: list[Any], timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout - _SLICE_S
        while True:
            left = _SLICE_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TransportTimeout(f"send to {peer!r}: queue still full after {timeout} s (peer too slow?)")
            if self._ep.send(peer, hdr, bufs, min(left, _SLICE_S)):
                return

    def recv(self, timeout: float | None = None) -> Message:
        """Next message from any peer. Raises TransportTimeout, FrameRejected (that message only), PeerLost."""
        got: tuple[str, bytes, list[Any], float] | None
        if self._pending:
            got = self._pending.popleft()
        else:
            first = _SLICE_S if timeout is None or timeout > _SLICE_S else max(0.0, timeout)
            got = self._ep.recv(first)  # fast path: one C++ call
        sender, hdr, payloads, at = got if got is not None else self._recv_slow(timeout)
        return Message(sender, decode_header(hdr, sender, self._typed), payloads, at)

    def _recv_slow(self, timeout: float | None) -> tuple[str, bytes, list[Any], float]:
        deadline = None if timeout is None else time.monotonic() + timeout - _SLICE_S
        while True:
            left = _SLICE_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TransportTimeout(f"no message within {timeout} s")
            got = self._ep.recv(min(left, _SLICE_S))
            if got is not None:
                return got

    def recv_many(self, max_n: int = 256, timeout: float | None = None) -> list[Message]:
        """1..max_n queued messages in one call (cheaper per message than recv); raises like recv.

        An error or loss event is raised by the call that would return it first, never dropped.
        """
        if self._pending:
            got = [self._pending.popleft() for _ in range(min(max_n, len(self._pending)))]
        else:
            first = _SLICE_S if timeout is None or timeout > _SLICE_S else max(0.0, timeout)
            got = self._ep.recv_many(max_n, first) or [self._recv_slow(timeout)]
        out = []
        for k, (sender, hdr, payloads, at) in enumerate(got):
            try:
                out.append(Message(sender, decode_header(hdr, sender, self._typed), payloads, at))
            except FrameRejected:
                self._pending.extendleft(reversed(got[k + 1 :]))  # keep the rest for the next call
                if out:
                    self._pending.appendleft((sender, hdr, payloads, at))
                    return out
                raise
        return out

    def peers(self) -> dict[str, str]:
        """Peer name -> "connecting" | "alive" | "lost"."""
        return self._ep.peers()

    def stats(self) -> dict[str, int]:
        return self._ep.stats()

    def rekey(self, peer: str, public_key: str) -> None:
        """`peer`'s key was rotated: reconnect to it, expecting `public_key` (Z85)."""
        self._ep.rekey(peer, public_key)

    def redial(self, peer: str) -> None:
        """`peer` is alive (it spoke to us) but our link to it says lost: dial it again on a fresh socket."""
        self._ep.redial(peer)

    def set_allowed(self, public_keys: Sequence[str]) -> None:
        """Replace the CURVE allow-list; handshakes from now on are checked against it."""
        self._ep.set_allowed(list(public_keys))

    def take_denied(self) -> list[tuple[str, str]]:
        """Peers refused at the CURVE handshake since the last call, each address once: (address, public key)."""
        return self._ep.take_denied()

    def close(self) -> None:
        """Flush queued messages (up to linger_s), say goodbye to peers, stop the I/O thread. Idempotent."""
        self._ep.close()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _close_all() -> None:  # never leave I/O threads running into interpreter teardown
    for ep in list(_live):
        ep.close()
