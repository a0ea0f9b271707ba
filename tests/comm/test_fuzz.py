"""Fuzzed frame parsing: the receiver's parser (C++) and header decoder never crash, only reject.

>= 10^5 cases: hypothesis draws 2,000 seeds x 60 mutations of valid messages, plus 1,000 free-form
frame lists. Wire-level fuzzing through a live socket is in test_robustness.py.
"""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_helix.comm import Header, TensorSpec
from vllm_helix.comm import _transport as T
from vllm_helix.comm.messages import decode_header, encode_header
from vllm_helix.errors import FrameRejected

LIM = T.Limits()
LIM.max_header_bytes, LIM.max_payload_bytes, LIM.max_payloads = 512, 4096, 8
TEMPLATES = [
    [T.encode_first(0, [], encode_header(Header("x")))],
    [T.encode_first(0, [4, 0], encode_header(Header("step", request_ids=("a",), meta={"k": 1}))), b"abcd", b""],
    [T.encode_first(0, [8], encode_header(Header("t", tensors=(TensorSpec("float32", (2,)),)))), bytes(8)],
    [T.encode_first(1, [], b"")],
    [T.encode_first(2, [], b"")],
]
MUTATIONS_PER_EXAMPLE = 60
cases = 0


def receive(frames: list[bytes]) -> None:
    """Everything the receiving side does with one message's frames."""
    global cases
    cases += 1
    try:
        kind, header, sizes = T.parse_message(frames, LIM)
    except FrameRejected:
        return
    assert kind in (0, 1, 2) and len(header) <= LIM.max_header_bytes and len(sizes) <= LIM.max_payloads
    if kind == 0:
        assert [len(f) for f in frames[1:]] == sizes
        with contextlib.suppress(FrameRejected):
            decode_header(header, "fuzz")


def mutate(rng: random.Random, frames: list[bytes]) -> list[bytes]:
    out = [bytearray(f) for f in frames]
    for _ in range(rng.randint(1, 5)):
        f = rng.choice(out) if out else None
        op = rng.randrange(7)
        if f is not None and op == 0 and f:
            f[rng.randrange(len(f))] = rng.randrange(256)
        elif f is not None and op == 1:
            del f[rng.randrange(len(f) + 1) :]
        elif f is not None and op == 2:
            f[rng.randrange(len(f) + 1) : 0] = rng.randbytes(rng.randint(1, 16))
        elif f is not None and op == 3 and len(f) >= 16:  # poke a length/count field
            pos = rng.choice([4, 8, 16, 20])
            if pos + 4 <= len(f):
                f[pos : pos + 4] = rng.choice([0, 1, 7, 8, 9, 2**31, 2**32 - 1]).to_bytes(4, "little")
        elif op == 4:
            out.append(bytearray(rng.randbytes(rng.randint(0, 16))))
        elif op == 5 and out:
            out.pop(rng.randrange(len(out)))
        elif f is not None:
            f[:] = rng.randbytes(len(f))
    return [bytes(f) for f in out]


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(seed=st.integers(0, 2**64 - 1), template=st.sampled_from(TEMPLATES))
def test_mutated_messages_are_parsed_or_rejected(seed: int, template: list[bytes]) -> None:
    rng = random.Random(seed)
    for _ in range(MUTATIONS_PER_EXAMPLE):
        receive(mutate(rng, template))


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(st.binary(max_size=80), max_size=10))
def test_arbitrary_frames_are_parsed_or_rejected(frames: list[bytes]) -> None:
    receive(frames)


def test_at_least_1e5_cases_ran() -> None:
    if cases == 0:
        pytest.skip("the fuzz tests above were deselected")
    assert cases >= 100_000, f"only {cases} fuzz cases ran (run the whole module)"
