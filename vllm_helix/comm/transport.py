"""`Transport`: what the serving path needs from an endpoint. The C++ `Endpoint` and `PyzmqEndpoint` are both one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from .messages import Header, Message


@runtime_checkable
class Transport(Protocol):
    def connect(self, peer: str, address: str, public_key: str | None = None) -> None: ...

    def send(self, peer: str, header: Header, payloads: Sequence[Any] = (), timeout: float | None = None) -> None:
        """Raises PeerLost (peer gone) or TransportTimeout (its queue stayed full)."""

    def recv(self, timeout: float | None = None) -> Message:
        """Next message from any peer. Raises TransportTimeout, PeerLost, FrameRejected (that message only)."""
        ...

    def recv_many(self, max_n: int = 256, timeout: float | None = None) -> list[Message]: ...

    def redial(self, peer: str) -> None:
        """Dial `peer` again on a fresh socket: it spoke to us, though our link to it says lost."""

    def peers(self) -> dict[str, str]:
        """Connected peers: name -> address."""
        ...

    def close(self) -> None: ...
