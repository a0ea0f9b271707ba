"""Real KV-cache occupancy of one node, in token-layer slots (helix-spec §6.3).

A prompt adds P slots per layer it runs, a decode step one per layer; a query's slots are freed on every
node when it finishes. Going over capacity does not crash: it is counted and reported.
"""

from __future__ import annotations


class KVCache:
    __slots__ = ("capacity", "used", "peak", "overflows", "_per_query")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self.overflows = 0  # number of additions that left the cache over capacity
        self._per_query: dict[int, int] = {}

    def add(self, query_id: int, slots: int) -> None:
        self.used += slots
        self._per_query[query_id] = self._per_query.get(query_id, 0) + slots
        if self.used > self.peak:
            self.peak = self.used
            if self.used > self.capacity:
                self.overflows += 1
        elif self.used > self.capacity:
            self.overflows += 1

    def free(self, query_id: int) -> None:
        self.used -= self._per_query.pop(query_id, 0)

    @property
    def usage(self) -> float:
        return self.used / self.capacity if self.capacity else 0.0
