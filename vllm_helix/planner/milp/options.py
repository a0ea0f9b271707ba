"""`SolverOptions`: every setting of the MILP placement in one place, checked once.

`solve_milp(..., options)` takes one; `SolverOptions.from_kwargs(**kw)` builds one from keyword arguments
(`place(..., method="milp", time_limit_s=30)`) and refuses names it does not know, so a misspelt option is
an error instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vllm_helix.errors import InfeasiblePlacement, SolverUnavailable

SOLVERS = ("auto", "cpsat", "gurobi")
FORMULATIONS = ("compact", "interval")
DEFAULT_SCALE = 100  # flow units per token/s: the MILP works in 0.01 tok/s
DEFAULT_KV_RESERVE = 0.5  # share of VRAM kept for KV cache and activations (the reference's half-VRAM rule)
DEFAULT_THREADS = 2  # fixed, not "all cores": the same options give the same plan on any machine


@dataclass(frozen=True, slots=True)
class SolverOptions:
    solver: str = "auto"  # auto (gurobi when installed) | cpsat | gurobi
    threads: int = DEFAULT_THREADS
    time_limit_s: float = 60.0  # wall clock; with work_limit it is only a safety cap
    work_limit: float | None = None  # CP-SAT deterministic time units: set -> reproducible search
    seed: int = 0
    progress: bool = False  # live rich line on stderr
    relative_gap: float = 1e-4
    pins: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # node -> (start, end) exclusive
    excludes: tuple[str, ...] = ()
    max_layers_per_node: int | None = None
    min_layers_per_node: int | None = None  # bounds pipeline depth: a route has <= ceil(L / min) stages
    max_node_share: float | None = None  # a node carries at most this share of the total flow (parallel routes)
    kv_reserve_fraction: float = DEFAULT_KV_RESERVE
    partial_inference: bool = False
    prune: tuple[int, int, float] | None = None  # reference's (min_keep, max_keep, bandwidth threshold)
    warm_start: bool = True
    symmetry_breaking: bool = True
    layer_cuts: bool = True
    clip_capacities: bool = True
    scale: int = DEFAULT_SCALE
    formulation: str = "compact"  # compact | interval (CP-SAT model variant)
    log: Any = None  # stream for the Gurobi fallback line (default stderr)

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise SolverUnavailable(f"unknown MILP solver {self.solver!r}; choose from {list(SOLVERS)}")
        if self.formulation not in FORMULATIONS:
            raise SolverUnavailable(f"unknown formulation {self.formulation!r}; choose 'compact' or 'interval'")
        if not self.time_limit_s > 0:
            raise InfeasiblePlacement(f"time limit must be > 0 s, got {self.time_limit_s}")
        if self.work_limit is not None and not self.work_limit > 0:
            raise InfeasiblePlacement(f"work limit must be > 0, got {self.work_limit}")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise InfeasiblePlacement(f"threads must be an integer >= 1, got {self.threads!r}")
        for name in ("max_layers_per_node", "min_layers_per_node"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InfeasiblePlacement(f"{name} must be >= 1, got {value}")
        if self.max_node_share is not None and not 0 < self.max_node_share <= 1:
            raise InfeasiblePlacement(f"max_node_share must be in (0, 1], got {self.max_node_share}")
        if not 0 <= self.kv_reserve_fraction < 1:
            raise InfeasiblePlacement(f"kv_reserve_fraction must be in [0, 1), got {self.kv_reserve_fraction}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SolverOptions:
        """Options from keyword arguments; an unknown name is an error that lists the known ones."""
        return cls().updated(**kwargs)

    def updated(self, **kwargs: Any) -> SolverOptions:
        """A copy with `kwargs` changed (validated and normalized as `from_kwargs`)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InfeasiblePlacement(f"unknown MILP option(s) {unknown}; known options: {sorted(known)}")
        if kwargs.get("threads") in (0, None):  # 0 / None used to mean "all cores": now the fixed default
            kwargs.pop("threads", None)
        if "pins" in kwargs:
            kwargs["pins"] = {n: (int(r[0]), int(r[1])) for n, r in (kwargs["pins"] or {}).items()}
        if "excludes" in kwargs:
            kwargs["excludes"] = tuple(kwargs["excludes"] or ())
        if kwargs.get("prune"):
            kwargs["prune"] = _prune(kwargs["prune"])
        return dataclasses.replace(self, **kwargs)

    def reproducible(self) -> bool:
        """Same inputs and options give the same plan: a deterministic work limit bounds the search."""
        return self.work_limit is not None


def _prune(value: Sequence[float]) -> tuple[int, int, float]:
    min_keep, max_keep, threshold = value
    return int(min_keep), int(max_keep), float(threshold)
