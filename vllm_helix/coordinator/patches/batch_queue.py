"""Let EngineCore take Helix batches back in the order they finish, not the order they were sent.

vLLM waits for the oldest batch in flight. Helix batches follow different routes (a fast replica and a
slow one, say), so a batch that finished behind an older, slower one would wait for it, and the fast
nodes with it. A request's outputs must still reach the scheduler in order: under synchronous scheduling it is in
at most one batch in flight (a rerouted request's old incarnation is answered at once, `batches.py`); under
--helix-async it can be in two, and the later one can finish first (the earlier one's other requests still on
their way), so a finished batch waits for every older one it shares a request with.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.engine.core import EngineCore

# EngineCore's entries: (output future, the batch, the execute_model future)
Entry = tuple[Future, "SchedulerOutput", Future]

logger = logging.getLogger(__name__)
POLL_S = 0.005  # how often a blocked pop looks for new requests


class CompletionOrderQueue(deque):
    """EngineCore's batch queue (`appendleft` new, `pop` old) whose `pop` returns the oldest finished batch.

    Empty batches (scheduled while every request was in flight) finish at once; `pop` hands one back only
    when it is the oldest entry or when new requests wait in the engine's input queue, so the engine neither
    spins on them nor sits out a long batch while new requests could start on idle nodes.
    """

    def __init__(self, entries: Iterable[Entry], maxlen: int | None, engine: EngineCore):
        super().__init__(entries, maxlen=maxlen)
        self.engine = engine

    def pop(self) -> Entry:  # type: ignore[override]  # EngineCore pops only the oldest
        while True:
            if self[-1][0].done():
                return super().pop()
            real = [entry for entry in reversed(self) if _scheduled_tokens(entry)]  # oldest first
            done = _oldest_finished(real)
            if done is None and self._input_waiting():
                done = next((entry for entry in reversed(self) if not _scheduled_tokens(entry)), None)
            if done is not None:
                self.remove(done)
                return done
            # the batches in flight: a finished one that waits for an older one must not make this spin
            wait([entry[0] for entry in real if not entry[0].done()], timeout=POLL_S, return_when=FIRST_COMPLETED)

    def _input_waiting(self) -> bool:
        inputs = getattr(self.engine, "input_queue", None)
        return inputs is not None and not inputs.empty()


def _scheduled_tokens(entry: Entry) -> int:
    return entry[1].total_num_scheduled_tokens


def _oldest_finished(entries: list[Entry]) -> Entry | None:
    """The oldest finished batch that no older batch still in flight shares a request with (async scheduling: a
    request's outputs reach the scheduler in order). Each batch is looked at once, so one that finishes meanwhile
    cannot let a later one pass it."""
    in_flight: list[Entry] = []
    for entry in entries:
        if not entry[0].done():
            in_flight.append(entry)
            continue
        requests = entry[1].num_scheduled_tokens.keys()
        if all(requests.isdisjoint(older[1].num_scheduled_tokens) for older in in_flight):
            return entry
    return None


def apply() -> None:
    """Make `EngineCore.batch_queue` a property whose setter swaps in a CompletionOrderQueue for a Helix engine.

    A property, not a wrapped `__init__`: plugins load inside `EngineCore.__init__` (in a spawned engine
    process), after the instance's `__init__` began but before it creates the batch queue.
    """
    from vllm.v1.engine.core import EngineCore

    if isinstance(EngineCore.__dict__.get("batch_queue"), property):
        return

    def get(self) -> deque | None:
        return self.__dict__.get("_helix_batch_queue")

    def set_(self, queue: deque | None) -> None:
        from vllm_helix.coordinator.executor import HelixExecutor

        if queue is not None and isinstance(getattr(self, "model_executor", None), HelixExecutor):
            queue = CompletionOrderQueue(queue, queue.maxlen, self)
            logger.info("Helix: %d batches in flight, taken back in the order they finish", queue.maxlen)
        self.__dict__["_helix_batch_queue"] = queue

    EngineCore.batch_queue = property(get, set_)
