"""A node server between real transport channels and a real partial-layer worker: KV room and the Free race.

The coordinator reuses a finished request's KV room at once and sends its Free to every node of its route;
the next request's step reaches a later hop through the hops before it, so it can arrive before that Free.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from greedy_reference import CONFIG

from vllm_helix import wire as p
from vllm_helix.coordinator.local_nodes import free_port
from vllm_helix.wire import COORDINATOR_PEER, open_channel

pytestmark = pytest.mark.engine

MAX_LEN = 64


@pytest.fixture(scope="module")
def server(tiny_llama_path):
    """The whole tiny model on one node whose KV cache holds one MAX_LEN-token sequence and no more; a
    coordinator channel that talks to it. Yields (server, coordinator channel)."""
    from vllm_helix.node.partial_worker import PartialLayerWorker
    from vllm_helix.node.server import NodeServer

    config = replace(CONFIG, max_model_len=MAX_LEN)
    stats = PartialLayerWorker(str(tiny_llama_path), (0, 8), config).kv_stats()
    blocks = -(-MAX_LEN // stats.block_size)
    worker = PartialLayerWorker(str(tiny_llama_path), (0, 8),
                                replace(config, kv_cache_bytes=(blocks + 1) * stats.bytes_per_block))
    assert worker.kv_stats().total_blocks == blocks
    node_address, coordinator_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    coordinator, channel = open_channel(COORDINATOR_PEER, coordinator_address), open_channel("n", node_address)
    coordinator.connect("n", node_address)
    channel.connect(COORDINATOR_PEER, coordinator_address)
    node = NodeServer("n", worker, channel, {COORDINATOR_PEER: coordinator_address})
    yield node, coordinator
    channel.close()
    coordinator.close()


def _step(step_id: int, rid: str, num_tokens: int) -> p.Step:
    new = p.NewRequest(list(range(5, 5 + num_tokens)), ["n"], p.encode_sampling(None))
    return p.Step(step_id, [p.Item(rid, 0, num_tokens, [], new)])


def _answer(coordinator) -> p.Message:
    while True:
        received = coordinator.recv(30)
        assert received is not None, "the node did not answer"
        if not isinstance(received.message, p.Busy):
            return received.message


def _run_step(node, coordinator, step: p.Step, then: p.Message | None = None):
    """Send `step`; once the node took it into a batch, send `then`; run the batch the way the server loop does."""
    coordinator.send("n", step)
    batch = node._collect(timeout_s=30)
    assert list(batch.step_of) == [i.request_id for i in step.items]
    if then is not None:
        coordinator.send("n", then)
    node._wait_for_kv(batch)
    node._run(batch)
    return _answer(coordinator)


def test_a_step_that_overtakes_the_free_making_its_room_waits_for_that_free(server):
    node, coordinator = server
    assert isinstance(_run_step(node, coordinator, _step(1, "a", MAX_LEN - 4)), p.Tokens)  # "a" fills the cache
    assert node.worker.blocks_short([_item(_step(2, "b", 40))]) == 0  # not on the node yet: counts nothing
    answer = _run_step(node, coordinator, _step(2, "b", 40), then=p.Free(["a"]))
    assert isinstance(answer, p.Tokens) and [t.request_id for t in answer.results] == ["b"]
    assert "a" not in node.routes
    coordinator.send("n", p.Free(["b"]))
    node._collect(timeout_s=1)
    assert node.worker.kv_usage() == 0


def test_without_the_free_the_batch_fails_as_a_full_cache_after_the_wait(server):
    node, coordinator = server
    node.kv_wait_s = 0.5
    try:
        assert isinstance(_run_step(node, coordinator, _step(3, "c", MAX_LEN - 4)), p.Tokens)
        answer = _run_step(node, coordinator, _step(4, "d", 40))
    finally:
        node.kv_wait_s = 5.0
    assert isinstance(answer, p.Failed) and answer.request_ids == ["d"] and "KVCacheFull" in answer.error
    assert node.deferred == []  # nothing else arrived meanwhile


def _item(step: p.Step):
    from vllm_helix.node.types import StepItem

    item = step.items[0]
    return StepItem(item.request_id, item.start_position, item.num_tokens, [])


def test_async_decode_steps_take_the_last_nodes_token_and_late_steps_of_a_freed_request_are_dropped(server):
    """--helix-async on a one-node route (the node is first and last): a decode step sent before its token was
    known waits for the token the node hands itself, and decodes what a step carrying that token decodes; once
    the request is freed, a step of it sent before it stopped is dropped without failing anything."""
    node, coordinator = server
    coordinator.send("n", p.Free(["c", "d"]))  # the test before left its requests on the node
    node._collect(timeout_s=1)
    prompt = list(range(5, 13))

    def run(steps):
        for step in steps:
            coordinator.send("n", step)
        batch = node._collect(timeout_s=30)
        node._run(batch)
        answer = _answer(coordinator)
        assert isinstance(answer, p.Tokens), answer
        return answer.results[0].token_id

    new = p.NewRequest(prompt, ["n"], p.encode_sampling(None), sampled_to_first=True)
    first = run([p.Step(20, [p.Item("s", 0, 8, [], new)]), p.Step(21, [p.Item("s", 8, 1, [])])])
    second = run([])
    assert node.feed.tokens["s"] == (9, second)
    coordinator.send("n", p.Free(["s"]))
    node._collect(timeout_s=1)
    coordinator.send("n", p.Step(22, [p.Item("s", 9, 1, [second])]))  # sent before "s" stopped
    assert node._collect(timeout_s=1).items == []
    late = coordinator.recv(1.0)
    assert late is None or isinstance(late.message, p.Busy), late
    assert node.worker.kv_usage() == 0
    # the same request without async scheduling, its token sent along: the same tokens
    sync = p.NewRequest(prompt, ["n"], p.encode_sampling(None))
    assert run([p.Step(23, [p.Item("r", 0, 8, [], sync)])]) == first
    assert run([p.Step(24, [p.Item("r", 8, 1, [first])])]) == second
    coordinator.send("n", p.Free(["r"]))
    node._collect(timeout_s=1)


def test_a_step_whose_payload_is_unlike_its_header_is_dropped_and_the_node_serves_on(server, caplog):
    from vllm_helix.comm import Header, TensorSpec

    node, coordinator = server
    bad = Header(kind=p.KIND, tensors=(TensorSpec("float32", (4, 8)),), meta=_step(30, "bad", 4))  # type: ignore[arg-type]
    coordinator.endpoint.send("n", bad, [bytes(12)])  # 12 bytes, not 4 x 8 values
    assert node._collect(timeout_s=30).items == []  # dropped
    answer = _run_step(node, coordinator, _step(31, "good", 4))
    assert isinstance(answer, p.Tokens) and [t.request_id for t in answer.results] == ["good"]
    assert "dropped a malformed message" in caplog.text and "payloads unlike its header's" in caplog.text
    assert "bad" not in node.routes
    coordinator.send("n", p.Free(["good"]))
    node._collect(timeout_s=1)
