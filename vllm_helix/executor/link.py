"""The serving path's view of the transport: send to named peers, receive from any.

`open_link(name, bind)` returns the C++ endpoint from `vllm_helix.comm` when it is built, else the
pyzmq implementation below (same semantics: one ROUTER bound for receiving, one DEALER per peer for
sending, identity = own name). Node names and the coordinator are the peer names.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

COORDINATOR_PEER = "coordinator"


@dataclass(slots=True)
class Received:
    peer: str
    header: bytes
    payloads: list[Any]  # buffers torch.frombuffer can view


class Link(Protocol):
    def connect(self, peer: str, address: str) -> None: ...
    def peers(self) -> set[str]: ...
    def send(self, peer: str, header: bytes, payloads: Sequence[Any]) -> None: ...
    def recv(self, timeout_s: float) -> Received | None: ...
    def close(self) -> None: ...


def tcp(address: str) -> str:
    return address if "://" in address else f"tcp://{address}"


class ZmqLink:
    def __init__(self, name: str, bind: str):
        import zmq

        self._zmq = zmq
        self.name = name
        self._context = zmq.Context()
        self._inbox = self._context.socket(zmq.ROUTER)
        self._inbox.setsockopt(zmq.LINGER, 0)
        self._inbox.bind(tcp(bind))
        self._outboxes: dict[str, Any] = {}
        self._lock = threading.Lock()  # sends come from the executor's thread and its receiver thread

    def connect(self, peer: str, address: str) -> None:
        socket = self._context.socket(self._zmq.DEALER)
        socket.setsockopt(self._zmq.IDENTITY, self.name.encode())
        socket.setsockopt(self._zmq.LINGER, 0)
        socket.connect(tcp(address))
        with self._lock:
            self._outboxes[peer] = socket

    def peers(self) -> set[str]:
        return set(self._outboxes)

    def send(self, peer: str, header: bytes, payloads: Sequence[Any]) -> None:
        with self._lock:
            self._outboxes[peer].send_multipart([header, *payloads], copy=False)

    def recv(self, timeout_s: float) -> Received | None:
        if not self._inbox.poll(int(timeout_s * 1000)):
            return None
        identity, header, *payloads = self._inbox.recv_multipart(copy=False)
        return Received(bytes(identity.buffer).decode(), bytes(header.buffer), [f.buffer for f in payloads])

    def close(self) -> None:
        for socket in [self._inbox, *self._outboxes.values()]:
            socket.close(linger=0)
        self._context.term()


def open_link(name: str, bind: str) -> Link:
    return ZmqLink(name, bind)
