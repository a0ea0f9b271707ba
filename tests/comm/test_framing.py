"""Units of the wire format: the C++ parser the receiver runs, and the msgspec header."""

from __future__ import annotations

import pytest

from vllm_helix.comm import Header, TensorSpec
from vllm_helix.comm import _transport as T
from vllm_helix.comm.messages import decode_header, encode_header
from vllm_helix.errors import FrameRejected


def limits(header: int = 1024, payload: int = 1 << 20, n: int = 8) -> T.Limits:
    lim = T.Limits()
    lim.max_header_bytes, lim.max_payload_bytes, lim.max_payloads = header, payload, n
    return lim


def test_roundtrip_preserves_kind_header_and_sizes() -> None:
    first = T.encode_first(0, [3, 0, 5], b"hdr")
    assert len(first) == 16 + 3 * 8 + 3
    assert T.parse_message([first, b"abc", b"", b"12345"], limits()) == (0, b"hdr", [3, 0, 5])


def test_heartbeat_frame_is_16_bytes() -> None:
    assert T.parse_message([T.encode_first(1, [], b"")], limits()) == (1, b"", [])


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([b""], "truncated frame"),
        ([b"HX\x01"], "truncated frame"),
        ([b"XX" + bytes(14)], "bad magic"),
        ([b"HX\x02\x00" + bytes(12)], "wrong wire version 2"),
        ([b"HX\x01\x07" + bytes(12)], "unknown kind"),
        ([b"HX\x01\x00" + bytes(8) + b"\x01\x00\x00\x00"], "unknown flags"),
        ([T.encode_first(0, [4], b"h")[:-2]], "truncated first frame"),
        ([T.encode_first(0, [4], b"h") + b"zz", b"1234"], "malformed first frame"),
        ([T.encode_first(0, [4, 4], b"h"), b"1234"], "truncated message"),
        ([T.encode_first(0, [4], b"h"), b"1234", b"extra"], "malformed message"),
        ([T.encode_first(0, [4], b"h"), b"12"], "truncated payload 0"),
        ([T.encode_first(0, [4], b"h"), b"123456"], "oversized payload 0"),
        ([T.encode_first(0, [2 << 20], b"h"), b"x"], "oversized payload 0"),
        ([T.encode_first(0, [], b"h" * 2000)], "oversized header"),
        ([T.encode_first(0, [1] * 9, b"")], "oversized message: 9 payloads"),
        ([], "no frames"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(frames: list[bytes], match: str) -> None:
    with pytest.raises(FrameRejected, match=match):
        T.parse_message(frames, limits())


def test_header_roundtrip_and_size() -> None:
    h = Header(
        "step", request_ids=("r1", "r2"), route=("a", "b"), tensors=(TensorSpec("bfloat16", (2, 8)),), meta={"pos": 3}
    )
    data = encode_header(h)
    assert decode_header(data) == h
    assert len(encode_header(Header("x"))) < 16


def test_header_of_another_version_is_rejected() -> None:
    with pytest.raises(FrameRejected, match="header version 2"):
        decode_header(encode_header(Header("x", version=2)), "peer")


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x93\x01\x02\x03", encode_header(Header("x"))[:-1]])
def test_malformed_header_is_rejected(data: bytes) -> None:
    with pytest.raises(FrameRejected, match="malformed message header") as e:
        decode_header(data, "peer")
    assert e.value.peer == "peer"
