"""Which nodes of the plan are serving, and why the others are not: the coordinator's view of its cluster.

States: up; lost (why: its process exited, its link was lost, a neighbour cannot reach it); draining (it asked
to stop: its requests move elsewhere first); drained (told to stop); restarting (a local worker started again);
given up (a local worker that kept crashing at start-up). Also the queue of requests to move off their route,
which the receiver thread fills and the scheduler thread empties. Thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence

UP, DRAINING, DRAINED = "up", "draining", "drained"


class Membership:
    def __init__(self, nodes: list[str]):
        self._state = dict.fromkeys(nodes, "starting")
        self._since = dict.fromkeys(nodes, time.monotonic())
        self._refused: dict[str, str] = {}  # node -> the problem logged last for its Hello
        self._reroute: set[str] = set()
        self._told: set[str] = set()  # lost nodes heard again and told to rejoin
        self._lock = threading.Lock()

    def _set(self, node: str, state: str) -> None:
        with self._lock:
            self._state[node], self._since[node] = state, time.monotonic()
            self._told.discard(node)

    def up(self, node: str) -> None:
        self._set(node, UP)
        self._refused.pop(node, None)

    def lose(self, node: str, reason: str, draining: bool = False) -> None:
        self._set(node, DRAINING if draining else f"lost ({reason})")

    def restarting(self, node: str) -> None:
        self._set(node, "restarting")

    def give_up(self, node: str, why: str) -> None:
        self._set(node, f"given up ({why.splitlines()[0]})")

    def drained_out(self, node: str) -> None:
        self._set(node, DRAINED)

    def refuse(self, node: str, problem: str) -> bool:
        """A Hello of `node` was refused; True the first time for this problem (log it once)."""
        first = self._refused.get(node) != problem
        self._refused[node] = problem
        return first

    def is_up(self, node: str) -> bool:
        return self._state.get(node) == UP

    def since(self, node: str) -> float:
        """Seconds in the current state."""
        return time.monotonic() - self._since[node]

    def reachable(self, node: str) -> bool:
        """Messages to it can matter: it serves, or drains."""
        return self._state.get(node) in (UP, DRAINING)

    def drained(self, node: str) -> bool:
        return self._state.get(node) in (DRAINING, DRAINED)

    def lost_but(self, alive: set[str]) -> list[str]:
        """Lost nodes the transport hears again, each reported once per loss (they are told to rejoin)."""
        with self._lock:
            found = [n for n in alive if self._state.get(n, "").startswith("lost") and n not in self._told]
            self._told.update(found)
        return found

    def draining(self) -> list[str]:
        with self._lock:
            return [n for n, s in self._state.items() if s == DRAINING]

    def status(self) -> dict[str, str]:
        with self._lock:
            return dict(self._state)

    def describe(self) -> str:
        """'node-a up, node-b lost (local worker exited with status -9), node-c up'."""
        return ", ".join(f"{n} {s}" for n, s in self.status().items())

    def reroute(self, request_ids: Iterable[str]) -> None:
        with self._lock:
            self._reroute.update(request_ids)

    def take_reroutes(self) -> set[str]:
        with self._lock:
            taken, self._reroute = self._reroute, set()
        return taken


def stuck_nodes(routes: Iterable[Sequence[str]], last_report: Mapping[str, float], now: float,
                silence_s: float) -> list[str]:
    """The node each of `routes` (those of a step that timed out) is stuck at: its first node silent for `silence_s`.

    A node holding requests reports (Busy) every second from its serving loop, between batches, while the
    transport's own thread keeps answering heartbeats; so a node on a timed-out step's route that has been silent
    as long as the step timeout is stuck in a step (a hung kernel, a wedged device). The nodes after it on the
    route may be silent too, only because the step never reached them: the first silent one is the culprit.
    """
    stuck = set()
    for route in routes:
        silent = [n for n in route if now - last_report.get(n, float("-inf")) >= silence_s]
        if silent:
            stuck.add(silent[0])
    return sorted(stuck)
