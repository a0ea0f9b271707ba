"""Let EngineCore take Helix batches back in the order they finish, not the order they were sent.

vLLM waits for the oldest batch in flight. Helix batches follow different routes (a fast replica and a
slow one, say), so a batch that finished behind an older, slower one would wait for it, and the fast
nodes with it. Each request is in at most one batch in flight (synchronous scheduling; a rerouted request's
old incarnation is answered at once, `batches.py`), so the scheduler can take finished batches in any order.
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
            done = next((entry for entry in real if entry[0].done()), None)
            if done is None and self._input_waiting():
                done = next((entry for entry in reversed(self) if not _scheduled_tokens(entry)), None)
            if done is not None:
                self.remove(done)
                return done
            wait([entry[0] for entry in real], timeout=POLL_S, return_when=FIRST_COMPLETED)

    def _input_waiting(self) -> bool:
        inputs = getattr(self.engine, "input_queue", None)
        return inputs is not None and not inputs.empty()


def _scheduled_tokens(entry: Entry) -> int:
    return entry[1].total_num_scheduled_tokens


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
