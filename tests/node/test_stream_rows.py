"""The residual stream's rows as steps bring them to a node: one block per step, put in the runner's order."""

from __future__ import annotations

import torch

from vllm_helix import wire as p
from vllm_helix.node.server import NodeServer
from vllm_helix.node.types import StreamBlock, rows_in_order

CPU = torch.device("cpu")


def _block(rids: list[str], counts: list[int], paired: bool = False) -> StreamBlock:
    """Each request's rows hold its name's first letter's code, row by row (a + 0, a + 1, ...)."""
    rows = torch.cat([ord(rid[0]) + torch.arange(n, dtype=torch.float32) for rid, n in zip(rids, counts, strict=True)])
    stream = rows[:, None].repeat(1, 4)
    return StreamBlock(rids, counts, stream, -stream if paired else None)


def test_a_block_in_the_runners_order_comes_whole_as_a_copy():
    block = _block(["a", "b", "c"], [1, 1, 3])
    (stream,) = rows_in_order([block], ["a", "b", "c"], CPU)
    assert torch.equal(stream, block.hidden_states)
    stream += 1  # the layers add and normalize in place
    assert block.hidden_states[0, 0] == ord("a")  # ... into a copy, not the received buffer


def test_rows_in_another_order_or_from_several_blocks_are_gathered_request_by_request():
    one, two = _block(["a", "b"], [2, 1], paired=True), _block(["c"], [3], paired=True)
    stream, residual = rows_in_order([one, two], ["c", "a", "b"], CPU)
    expected = torch.tensor([ord("c"), ord("c") + 1, ord("c") + 2, ord("a"), ord("a") + 1, ord("b")])
    assert torch.equal(stream[:, 0], expected) and torch.equal(residual, -stream)


def test_a_steps_payload_becomes_one_block_of_the_requests_still_on_the_node():
    """Async scheduling may send a step of requests that stopped meanwhile: their rows are left out of the block."""
    sent = _block(["a", "b", "c"], [2, 1, 3])
    step = p.Step(7, [p.Item(rid, 0, n) for rid, n in zip(sent.request_ids, sent.counts, strict=True)])
    received = p.Received("node0", step, [sent.hidden_states])
    whole = NodeServer._payload(step, received, list(step.items))
    assert whole is not None and whole.request_ids == ["a", "b", "c"] and whole.hidden_states is sent.hidden_states
    kept = NodeServer._payload(step, received, [step.items[0], step.items[2]])
    assert kept is not None and (kept.request_ids, kept.counts) == (["a", "c"], [2, 3])
    assert torch.equal(kept.hidden_states, torch.cat([sent.hidden_states[:2], sent.hidden_states[3:]]))
    assert NodeServer._payload(step, received, []) is None
