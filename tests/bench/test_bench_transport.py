"""pytest-benchmark: C++ endpoint vs pyzmq, 1 KiB - 64 MiB payloads, in one process over loopback TCP.

Skipped by default (--benchmark-skip in pyproject); run with
    .venv/bin/python -m pytest tests/bench/test_bench_transport.py --benchmark-enable --benchmark-only
The two-process table for the docs comes from bench/bench_transport.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest

from vllm_helix.comm import Endpoint, EndpointOptions, Header
from vllm_helix.comm.pyzmq_endpoint import PyzmqEndpoint
from vllm_helix.errors import TransportTimeout

SIZES = [1 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20]
BATCH = {1 << 10: 1000, 64 << 10: 200, 1 << 20: 50, 16 << 20: 8, 64 << 20: 2}


@pytest.fixture(params=["cpp", "pyzmq"])
def pair(request) -> Iterator[tuple[object, object]]:
    if request.param == "cpp":
        opts = EndpointOptions(peer_timeout_s=30.0)
        rx, tx = Endpoint("rx", options=opts), Endpoint("tx", options=opts)
    else:
        rx, tx = PyzmqEndpoint("rx"), PyzmqEndpoint("tx")
    tx.connect("rx", rx.address)
    yield rx, tx
    tx.close()
    rx.close()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s >> 10}KiB")
def test_send_and_receive_a_batch(benchmark, pair, size: int) -> None:
    rx, tx = pair
    payload = np.ones(size, dtype=np.uint8)
    n = BATCH[size]
    benchmark.group = f"transport {size >> 10} KiB x {n}"

    def round_trip() -> None:
        for _ in range(n):
            tx.send("rx", Header("bench"), [payload])
        for _ in range(n):
            rx.recv(timeout=30)

    benchmark.pedantic(round_trip, rounds=5, warmup_rounds=1)
    benchmark.extra_info["bytes_per_round"] = n * size


def test_a_zero_timeout_receive_with_nothing_queued(benchmark, pair) -> None:
    """How a node ends collecting each batch: it must look, not wait (a timed wait of zero costs the kernel's
    timer slack, 50 us by default)."""
    rx, _ = pair
    benchmark.group = "recv(timeout=0), nothing queued"

    def look() -> None:
        with contextlib.suppress(TransportTimeout):
            rx.recv(timeout=0)

    benchmark(look)
