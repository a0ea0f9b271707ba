"""The serving path's channel over the C++ endpoint: payloads come out as the tensors that went in, and a message
whose payloads disagree with its header is refused by name, without stopping the messages after it."""

from __future__ import annotations

import pytest
import torch

from vllm_helix import wire as p
from vllm_helix.comm import Header, TensorSpec
from vllm_helix.coordinator.local_nodes import free_port
from vllm_helix.errors import FrameRejected


@pytest.fixture
def channels():
    a_address, b_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    a, b = p.open_channel("a", a_address), p.open_channel("b", b_address)
    a.connect("b", b_address)
    yield a, b
    a.close()
    b.close()


def test_tensors_cross_as_they_were_sent_in_numpys_dtypes_and_in_bfloat16(channels):
    a, b = channels
    sent = [torch.randn(3, 8), torch.randn(2, 5).to(torch.bfloat16), torch.arange(6, dtype=torch.int64)]
    a.send("b", p.Step(1, [p.Item("r", 0, 3)]), sent)
    got = b.recv(5.0)
    assert got is not None and isinstance(got.message, p.Step)
    assert [t.dtype for t in got.tensors] == [t.dtype for t in sent]
    assert all(torch.equal(g, s) for g, s in zip(got.tensors, sent, strict=True))


@pytest.mark.parametrize("spec", [TensorSpec("float32", (4, 8)), TensorSpec("bfloat16", (4, 8)),
                                  TensorSpec("no-such-dtype", (2,))], ids=["float32", "bfloat16", "unknown"])
def test_payloads_unlike_their_header_are_refused_and_the_next_message_arrives(channels, spec):
    a, b = channels
    header = Header(kind=p.KIND, tensors=(spec,), meta=p.Step(1, [p.Item("r", 0, 4)]))  # type: ignore[arg-type]
    a.endpoint.send("b", header, [bytes(12)])  # 12 bytes, not 4 x 8 values
    with pytest.raises(FrameRejected, match="from 'a' with payloads unlike its header's"):
        b.recv(5.0)
    a.send("b", p.Free(["r"]))
    got = b.recv(5.0)
    assert got is not None and got.message == p.Free(["r"])
