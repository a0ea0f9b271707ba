"""Fixtures for the transport tests."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from comm_helpers import FAST

from vllm_helix.comm import Endpoint


@pytest.fixture
def pair() -> Iterator[tuple[Endpoint, Endpoint]]:
    """Two endpoints on loopback, each knowing the other."""
    a, b = Endpoint("a", options=FAST), Endpoint("b", options=FAST)
    a.connect("b", b.address)
    b.connect("a", a.address)
    deadline = time.monotonic() + 5
    while (a.peers()["b"], b.peers()["a"]) != ("alive", "alive") and time.monotonic() < deadline:
        time.sleep(0.005)
    yield a, b
    a.close()
    b.close()
