"""The Endpoint interface on pyzmq alone: the benchmark baseline for the C++ transport.

Same socket pattern (a bound ROUTER receives, one DEALER per peer sends) and the same header, but
no I/O thread, heartbeats, CURVE or frame limits: the data path only, as an application would
write it with pyzmq. Payloads of 64 KiB and more go zero-copy (copy=False), as pyzmq advises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq

from ..errors import FrameRejected, TransportTimeout
from .messages import Header, Message, as_buffer, decode_header, encode_header, typed_decoder

_ZERO_COPY_MIN = 64 << 10


class PyzmqEndpoint:
    def __init__(self, name: str, bind: str = "tcp://127.0.0.1:*", hwm: int = 1000,
                 header_type: type[Header] | None = None) -> None:
        self.name = name
        self._typed = typed_decoder(header_type)
        self._ctx = zmq.Context()
        self._hwm = hwm
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.rcvhwm = hwm
        self._router.bind(bind)
        self.address: str = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._dealers: dict[str, zmq.Socket] = {}

    def connect(self, peer: str, address: str, public_key: str | None = None) -> None:
        s = self._ctx.socket(zmq.DEALER)
        s.routing_id = self.name.encode()
        s.sndhwm = self._hwm
        s.connect(address)
        self._dealers[peer] = s

    def send(self, peer: str, header: Header, payloads: Sequence[Any] = (), timeout: float | None = None) -> None:
        s = self._dealers[peer]
        s.sndtimeo = -1 if timeout is None else int(timeout * 1000)
        bufs = [as_buffer(p) for p in payloads]
        try:
            if not bufs:
                s.send(encode_header(header))
                return
            s.send(encode_header(header), zmq.SNDMORE)
            for i, b in enumerate(bufs):
                flags = zmq.SNDMORE if i + 1 < len(bufs) else 0
                s.send(b, flags, copy=memoryview(b).nbytes < _ZERO_COPY_MIN)
        except zmq.Again:
            raise TransportTimeout(f"send to {peer!r} timed out") from None

    def recv(self, timeout: float | None = None) -> Message:
        self._router.rcvtimeo = -1 if timeout is None else int(timeout * 1000)
        try:
            frames = self._router.recv_multipart(copy=False)
        except zmq.Again:
            raise TransportTimeout(f"no message within {timeout} s") from None
        return self._message(frames)

    def _message(self, frames: list[zmq.Frame]) -> Message:
        if len(frames) < 2:  # every message, the first of a batch or not
            raise FrameRejected("message without header frame")
        sender = frames[0].bytes.decode(errors="replace")
        return Message(sender, decode_header(frames[1].bytes, sender, self._typed), [f.buffer for f in frames[2:]])

    def recv_many(self, max_n: int = 256, timeout: float | None = None) -> list[Message]:
        """The first message as recv, then whatever else is already queued (NOBLOCK), up to max_n."""
        out = [self.recv(timeout)]
        while len(out) < max_n:
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                out.append(self._message(frames))
            except FrameRejected:  # malformed, behind good ones: dropped (this baseline keeps no queue to raise later)
                break
        return out

    def redial(self, peer: str) -> None:
        address = self._dealers[peer].getsockopt_string(zmq.LAST_ENDPOINT)
        self._dealers.pop(peer).close(linger=0)
        self.connect(peer, address)

    def peers(self) -> dict[str, str]:
        return {p: "connected" for p in self._dealers}

    def close(self) -> None:
        for s in self._dealers.values():
            s.close(linger=1000)
        self._router.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> PyzmqEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
