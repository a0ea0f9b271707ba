"""AsyncFeed: a node's bookkeeping for async scheduling (--helix-async), without an engine."""

from __future__ import annotations

from vllm_helix import wire as p
from vllm_helix.node.async_feed import FREED_REMEMBERED, AsyncFeed
from vllm_helix.wire import Received

NEW = p.NewRequest([1, 2, 3, 4], ["first", "last"], b"", sampled_to_first=True)


def _step(step_id: int, *items: p.Item) -> Received:
    return Received("coordinator", p.Step(step_id, list(items)), [], 0.0)


def _decode(rid: str, position: int, tokens: tuple[int, ...] = ()) -> p.Item:
    return p.Item(rid, position, 1, list(tokens))


def test_a_decode_step_without_its_token_waits_for_the_last_nodes_and_then_carries_it():
    feed = AsyncFeed(is_first=True, is_last=False)
    feed.add("a", NEW)
    feed.add("b", NEW)
    step = _step(7, _decode("a", 4), _decode("b", 4, (9,)))  # b's token was known when the step left
    now, later = feed.split(step)
    assert now.message == p.Step(7, [_decode("b", 4, (9,))]) and feed.token_ids(now.message.items[0]) == [9]
    assert later.message == p.Step(7, [_decode("a", 4)])
    feed.hold(later)
    assert feed.on_sampled([("b", 5, 11)], 1.0) == []  # a's is still missing
    assert feed.on_sampled([("a", 3, 12)], 2.0) == []  # an older position is not the one this step decodes
    # released as arrived with its token: the wait for it is not the node's own time, and tracing keeps when it came
    assert feed.on_sampled([("a", 4, 13)], 3.0) == [Received("coordinator", later.message, [], 3.0, held_at=0.0)]
    assert feed.held == []
    assert feed.token_ids(later.message.items[0]) == [13]


def test_prefill_chunks_and_requests_without_async_never_wait():
    feed = AsyncFeed(is_first=True, is_last=False)
    feed.add("a", NEW)
    feed.add("sync", p.NewRequest([1, 2, 3, 4], ["first", "last"], b""))
    step = _step(1, p.Item("a", 0, 4, [], NEW), p.Item("sync", 4, 1, []))
    assert feed.split(step) == (step, None)
    assert feed.token_ids(p.Item("a", 0, 4, [])) == []


def test_a_step_splits_into_what_runs_now_and_what_waits_and_a_requests_later_steps_queue_behind():
    feed = AsyncFeed(is_first=True, is_last=False)
    feed.add("a", NEW)
    mixed = _step(3, p.Item("new", 0, 4, [], NEW), _decode("a", 4))
    now, later = feed.split(mixed)
    assert [i.request_id for i in now.message.items] == ["new"] and now.message.step_id == 3
    assert [i.request_id for i in later.message.items] == ["a"] and later.message.step_id == 3
    feed.hold(later)
    # a's next step, sent before step 3 ran, waits behind it even once its own token is known
    feed.tokens["a"] = (5, 77)
    assert feed.split(_step(5, _decode("a", 5))) == (None, _step(5, _decode("a", 5)))
    feed.hold(_step(5, _decode("a", 5)))
    released = feed.on_sampled([("a", 4, 42)], 1.0)
    assert [(r.message.step_id, feed.token_ids(r.message.items[0])) for r in released] == [(3, [42])]
    # taken again after its release, the step runs: the later held one does not block it
    assert feed.split(released[0]) == (released[0], None)


def test_held_steps_come_back_in_arrival_order():
    feed = AsyncFeed(is_first=True, is_last=False)
    for rid in "ab":
        feed.add(rid, NEW)
    first, second = _step(1, _decode("a", 4)), _step(2, _decode("b", 4))
    feed.hold(first)
    feed.hold(second)
    assert [r.message for r in feed.on_sampled([("b", 4, 5), ("a", 4, 6)], 1.0)] == [first.message, second.message]


def test_the_last_node_hands_tokens_to_each_requests_first_node():
    feed = AsyncFeed(is_first=False, is_last=True)
    feed.add("a", NEW)
    feed.add("b", p.NewRequest([1], ["other", "last"], b"", sampled_to_first=True))
    feed.add("sync", p.NewRequest([1], ["first", "last"], b""))
    handoffs = feed.handoffs([("a", 4, 10), ("b", 1, 11), ("sync", 1, 12)])
    assert handoffs == {"first": p.Sampled([("a", 4, 10)]), "other": p.Sampled([("b", 1, 11)])}


def test_a_freed_request_leaves_held_steps_and_its_late_steps_are_dropped():
    feed = AsyncFeed(is_first=True, is_last=False)
    for rid in "ab":
        feed.add(rid, NEW)
    feed.hold(_step(3, _decode("a", 4), _decode("b", 4)))
    feed.hold(_step(4, _decode("a", 5)))
    feed.forget(["a"])
    assert [[i.request_id for i in r.message.items] for r in feed.held] == [["b"]]  # step 4 had only "a"
    assert feed.gone(p.Step(5, [_decode("a", 5), _decode("b", 5)])) == {"a"}
    # a new request under that id (it carries NewRequest) is not a late step
    assert feed.gone(p.Step(6, [p.Item("a", 0, 4, [], NEW)])) == set()


def test_only_async_requests_are_remembered_as_freed_and_only_so_many():
    feed = AsyncFeed(is_first=True, is_last=True)
    feed.add("sync", p.NewRequest([1], ["first"], b""))
    feed.forget(["sync", "never-seen"])
    assert feed.freed == {}
    for i in range(FREED_REMEMBERED + 5):
        feed.add(f"r{i}", NEW)
        feed.forget([f"r{i}"])
    assert len(feed.freed) == FREED_REMEMBERED and "r0" not in feed.freed
