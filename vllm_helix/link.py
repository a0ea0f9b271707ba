"""The serving path's view of the transport: Helix messages to named peers, from any peer.

A Helix message (vllm_helix/wire.py) travels in the transport header's `meta`, its tensors as the
message payloads (zero-copy both ways). `VLLM_HELIX_TRANSPORT=pyzmq` swaps the C++ endpoint for the
pyzmq one (same interface), for comparisons.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vllm_helix import wire as p
from vllm_helix.comm import Header, tensor_spec
from vllm_helix.errors import TransportTimeout

COORDINATOR_PEER = "coordinator"
HELIX_KIND = "helix"


@dataclass(slots=True)
class Received:
    peer: str
    message: p.Message
    tensors: list[Any]  # torch tensors viewing the received buffers


def tcp(address: str) -> str:
    return address if "://" in address else f"tcp://{address}"


class Channel:
    def __init__(self, endpoint: Any):
        self.endpoint = endpoint

    def connect(self, peer: str, address: str) -> None:
        self.endpoint.connect(peer, tcp(address))

    def peers(self) -> set[str]:
        return set(self.endpoint.peers())

    def send(self, peer: str, message: p.Message, tensors: Sequence[Any] = ()) -> None:
        """Raises PeerLost (peer gone) or TransportTimeout (its queue stayed full)."""
        header = Header(kind=HELIX_KIND, tensors=tuple(tensor_spec(t) for t in tensors),
                        meta={"m": p.encode(message)})
        self.endpoint.send(peer, header, list(tensors), timeout=30.0)

    def recv(self, timeout_s: float) -> Received | None:
        """Next message, or None after `timeout_s`. Raises PeerLost, FrameRejected (that message only)."""
        try:
            raw = self.endpoint.recv(timeout_s)
        except TransportTimeout:
            return None
        message = p.decode(raw.header.meta.get("m", b"") if raw.header.kind == HELIX_KIND else b"")
        return Received(raw.sender, message, [raw.tensor(i) for i in range(len(raw.header.tensors))])

    def close(self) -> None:
        self.endpoint.close()


def open_channel(name: str, bind: str) -> Channel:
    if os.environ.get("VLLM_HELIX_TRANSPORT") == "pyzmq":
        from vllm_helix.comm.pyzmq_endpoint import PyzmqEndpoint

        return Channel(PyzmqEndpoint(name, tcp(bind)))
    from vllm_helix.comm import Endpoint

    return Channel(Endpoint(name, tcp(bind)))
