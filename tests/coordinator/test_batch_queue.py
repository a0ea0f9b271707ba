"""The completion-order batch queue EngineCore gets for a Helix engine (patches/batch_queue.py)."""

import queue
import threading
from concurrent.futures import Future
from types import SimpleNamespace

from vllm_helix.coordinator.patches.batch_queue import CompletionOrderQueue


def _batch(tokens: int, done: bool = False, requests: tuple[str, ...] = ()) -> tuple:
    future = Future()
    if done:
        future.set_result(f"output of {tokens}")
    if tokens and not requests:  # a batch of its own request
        requests = (f"r{id(future)}",)
    return future, SimpleNamespace(total_num_scheduled_tokens=tokens,
                                   num_scheduled_tokens=dict.fromkeys(requests, 1)), future


def _queue(*entries, waiting_input: bool = False) -> CompletionOrderQueue:
    engine = SimpleNamespace(input_queue=queue.Queue())
    if waiting_input:
        engine.input_queue.put("new request")
    q = CompletionOrderQueue([], len(entries), engine)
    for entry in entries:  # EngineCore: appendleft new, pop old
        q.appendleft(entry)
    return q


def test_a_finished_batch_is_taken_before_an_older_one_still_in_flight():
    slow, fast = _batch(16), _batch(16, done=True)
    q = _queue(slow, fast)
    assert q.pop() is fast and list(q) == [slow]


def test_a_finished_batch_waits_for_an_older_one_in_flight_with_a_request_of_it():
    """Async scheduling: "a" is in both batches, and its outputs must reach the scheduler in order."""
    older = _batch(16, requests=("a", "b"))
    other, later = _batch(8, done=True, requests=("c",)), _batch(16, done=True, requests=("a", "d"))
    q = _queue(older, other, later)
    assert q.pop() is other  # no request in common with the batch in flight
    threading.Timer(0.05, older[0].set_result, ["tokens"]).start()
    assert q.pop() is older and q.pop() is later


def test_the_oldest_batch_comes_first_when_it_is_done():
    old, new = _batch(8, done=True), _batch(8, done=True)
    assert _queue(old, new).pop() is old


def test_pop_waits_for_a_batch_in_flight_rather_than_spinning_on_an_empty_one():
    real, empty = _batch(16), _batch(0, done=True)
    q = _queue(real, empty)
    threading.Timer(0.05, real[0].set_result, ["tokens"]).start()
    assert q.pop() is real and list(q) == [empty]


def test_an_empty_batch_is_handed_back_when_new_requests_wait():
    real, empty = _batch(16), _batch(0, done=True)
    q = _queue(real, empty, waiting_input=True)
    assert q.pop() is empty and list(q) == [real]
    real[0].set_result("tokens")


def test_a_failed_batch_counts_as_finished():
    older, failed = _batch(16), _batch(4)
    failed[0].set_exception(RuntimeError("node lost"))
    assert _queue(older, failed).pop() is failed
