"""Interleaved weighted round-robin over a node's outbound arcs (helix-spec §5.1).

Each candidate x has a weight `cap_x` (its max-flow arc flow, tokens/s) and a load. Choosing adds
`w / cap_x` to the winner's load, where w is the work (tokens) of the iteration; the first index with
the smallest load-after-choice wins, so over time each arc receives work in proportion to its flow.
The reference never decays loads; `release` (used by the improved mode) takes work back when it is done.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class IWRR:
    def __init__(self, weights: Sequence[float]):
        self.weights = list(weights)
        self.loads = [0.0] * len(self.weights)

    def choose(self, work: float, allowed: Sequence[bool]) -> int:
        """Index of the allowed candidate with the smallest load after taking `work`; -1 if none allowed."""
        best, best_load = -1, math.inf
        for i, (weight, load, ok) in enumerate(zip(self.weights, self.loads, allowed, strict=False)):
            if ok and load + work / weight < best_load:
                best, best_load = i, load + work / weight
        if best >= 0:
            self.loads[best] += work / self.weights[best]
        return best

    def add(self, work: float, index: int) -> None:
        """Charge `work` to a fixed candidate (decode steps follow their prompt's route)."""
        self.loads[index] += work / self.weights[index]

    def release(self, work: float, index: int) -> None:
        """Undo `add`/`choose` (a rejected route, or finished work in the improved mode)."""
        self.loads[index] -= work / self.weights[index]
