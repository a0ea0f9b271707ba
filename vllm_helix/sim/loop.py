"""The event loop: a heap of (time, seq, handler, argument) and the clock. Nothing is kept once handled.

Ties at the same time run in scheduling order (`seq`), as in the reference (event uid order).
Handlers schedule their own follow-ups with `at`; the loop only pops and calls.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any


class EventLoop:
    def __init__(self, start_s: float = 0.0):
        self.now = start_s
        self._heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()
        self.handled = 0

    def at(self, time_s: float, handler: Callable[[Any], None], arg: Any = None) -> None:
        heapq.heappush(self._heap, (time_s, next(self._seq), handler, arg))

    def run(self, until: float = float("inf")) -> None:
        """Handle every event with time <= until, in (time, seq) order."""
        heap, pop, handled = self._heap, heapq.heappop, 0
        while heap and heap[0][0] <= until:
            self.now, _, handler, arg = pop(heap)
            handler(arg)
            handled += 1
        self.handled += handled

    @property
    def pending(self) -> int:
        return len(self._heap)
