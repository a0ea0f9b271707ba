"""Live solver progress: best verified max flow, bound, gap and elapsed time (rich), or nothing (quiet)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Incumbent:
    elapsed_s: float
    max_flow: float  # tokens/s, verified with the evaluator
    model_objective: float  # tokens/s, the solver's scaled objective divided back (for the history only)
    bound: float


@dataclass
class Progress:
    """Tracks incumbents and the bound; draws a one-line rich display unless quiet."""

    solver: str
    show: bool = False
    started: float = field(default_factory=time.monotonic)
    best: float = 0.0
    bound: float = float("inf")
    bound_source: str = "solver"  # which bound is the lowest: solver | compute | network
    history: list[Incumbent] = field(default_factory=list)
    _live: Any = None

    def __enter__(self) -> Progress:
        if self.show:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._render(), console=Console(file=sys.stderr), refresh_per_second=4,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)
            if not self._live.console.is_terminal:  # rich ends the line on a terminal only: what follows starts anew
                self._live.console.file.write("\n")
            self._live = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def gap(self) -> float | None:
        if self.best <= 0 or self.bound == float("inf"):
            return None
        return max(0.0, (self.bound - self.best) / self.best)

    def incumbent(self, max_flow: float, model_objective: float, bound: float) -> None:
        self.set_bound(bound)
        if max_flow > self.best:
            self.best = max_flow
            self.history.append(Incumbent(round(self.elapsed, 3), round(max_flow, 6), round(model_objective, 6),
                                          round(self.bound, 6)))
        self._refresh()

    def set_bound(self, bound: float, source: str = "solver") -> None:
        if bound < self.bound:
            self.bound, self.bound_source = bound, source
        self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Any:
        from rich.text import Text

        gap = "-" if self.gap is None else f"{100 * self.gap:.2f} %"
        bound = "-" if self.bound == float("inf") else f"{self.bound:.2f} ({self.bound_source})"
        return Text(f"{self.solver}: best max flow {self.best:.2f} tok/s | bound {bound} | gap {gap} | "
                    f"{self.elapsed:.1f} s  (Ctrl-C stops and keeps the best plan)")
