"""The serving path's view of the transport: Helix messages to named peers, from any peer.

A Helix message (executor/protocol.py) travels in the transport header's `meta`, its tensors as the
message payloads (zero-copy both ways). `VLLM_HELIX_TRANSPORT=pyzmq` swaps the C++ endpoint for the
pyzmq one (same interface), for comparisons.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vllm_helix.comm import Header, tensor_spec
from vllm_helix.errors import HelixError, TransportTimeout
from vllm_helix.executor import protocol as p

logger = logging.getLogger(__name__)
COORDINATOR_PEER = "coordinator"
HELIX_KIND = "helix"
DENIED_CHECK_S = 1.0  # how often recv() looks for peers refused at the CURVE handshake


@dataclass(slots=True)
class Received:
    peer: str
    message: p.Message
    tensors: list[Any]  # torch tensors viewing the received buffers


def tcp(address: str) -> str:
    return address if "://" in address else f"tcp://{address}"


class Link:
    def __init__(self, endpoint: Any, encrypted: bool = False):
        self.endpoint = endpoint
        self.encrypted = encrypted
        self._denied_checked = time.monotonic()

    def connect(self, peer: str, address: str, public_key: str | None = None) -> None:
        """Dial `peer`; on an encrypted link, `public_key` is the key it must prove it holds."""
        self.endpoint.connect(peer, tcp(address), public_key if self.encrypted else None)

    def allow(self, public_keys: Sequence[str]) -> None:
        """Accept connections from these keys only (encrypted links)."""
        if self.encrypted:
            self.endpoint.set_allowed(public_keys)

    def peers(self) -> set[str]:
        return set(self.endpoint.peers())

    def send(self, peer: str, message: p.Message, tensors: Sequence[Any] = ()) -> None:
        """Raises PeerLost (peer gone) or TransportTimeout (its queue stayed full)."""
        header = Header(kind=HELIX_KIND, tensors=tuple(tensor_spec(t) for t in tensors),
                        meta={"m": p.encode(message)})
        self.endpoint.send(peer, header, list(tensors), timeout=30.0)

    def recv(self, timeout_s: float) -> Received | None:
        """Next message, or None after `timeout_s`. Raises PeerLost, FrameRejected (that message only)."""
        if self.encrypted and time.monotonic() - self._denied_checked > DENIED_CHECK_S:
            self._log_denied()
        try:
            raw = self.endpoint.recv(timeout_s)
        except TransportTimeout:
            return None
        message = p.decode(raw.header.meta.get("m", b"") if raw.header.kind == HELIX_KIND else b"")
        return Received(raw.sender, message, [raw.tensor(i) for i in range(len(raw.header.tensors))])

    def _log_denied(self) -> None:
        self._denied_checked = time.monotonic()
        for address, key in self.endpoint.take_denied():  # the transport reports each address once
            logger.warning("%s: refused a connection from %s: its CURVE key %s is not one this node accepts",
                           self.endpoint.name, address, key[:8] + "..." if key else "(none)")

    def close(self) -> None:
        self.endpoint.close()


def open_link(name: str, bind: str, curve: Any = None) -> Link:
    """Bind `name`'s endpoint; with `curve` (CurveKeys with an allow-list) every link is CURVE."""
    if os.environ.get("VLLM_HELIX_TRANSPORT") == "pyzmq":
        if curve is not None:
            raise HelixError("VLLM_HELIX_TRANSPORT=pyzmq has no CURVE encryption: unset it, or use --helix-insecure")
        from vllm_helix.comm.pyzmq_endpoint import PyzmqEndpoint

        return Link(PyzmqEndpoint(name, tcp(bind)))
    from vllm_helix.comm import Endpoint

    return Link(Endpoint(name, tcp(bind), curve=curve), encrypted=curve is not None)
