"""A directed network link: FIFO, one transmission at a time, `latency + bytes / bandwidth` (§6.4).

Each hop reserves a fixed rate (the router's `Hop.bandwidth_bytes_per_s`: the reference's flow share,
or the NIC-shared link rate in the improved mode). Because that rate is fixed and the reservations of a
node's links never exceed its NICs, a link is an independent FIFO server and its finish time is known
when a message is queued: no send/finish events are needed.
"""

from __future__ import annotations

import math


class Link:
    __slots__ = ("src", "dst", "latency_s", "bytes_per_token", "free_at", "busy_s", "bytes_sent")

    def __init__(self, src: str, dst: str, latency_s: float, bytes_per_token: int):
        self.src, self.dst = src, dst
        self.latency_s = latency_s
        self.bytes_per_token = bytes_per_token
        self.free_at = 0.0
        self.busy_s = 0.0
        self.bytes_sent = 0

    def send(self, now: float, tokens: int, rate: float) -> float:
        """Queue `tokens` at `now` at `rate` bytes/s; returns the arrival time at the receiver."""
        start = now if now > self.free_at else self.free_at
        size = tokens * self.bytes_per_token
        duration = size / rate
        self.free_at = start + duration
        self.busy_s += duration
        self.bytes_sent += size
        return self.free_at + self.latency_s


def reference_rate(bandwidth: float, token_hop: bool) -> float:
    """The reference floors the reserved rate and asserts it is usable (> 10 B/s tokens, > 200 B/s)."""
    rate = math.floor(bandwidth)
    if rate <= (10 if token_hop else 200):
        raise ValueError(f"link rate {bandwidth} B/s is too slow to use")
    return rate
