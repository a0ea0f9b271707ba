"""Placement: which contiguous layer range [start, end) each compute node holds (absent = unused)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vllm_helix.errors import InfeasiblePlacement


@dataclass(frozen=True, slots=True, order=True)
class LayerRange:
    start: int
    end: int  # exclusive

    @property
    def size(self) -> int:
        return self.end - self.start

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"


@dataclass(frozen=True, slots=True)
class Placement:
    ranges: Mapping[str, LayerRange] = field(default_factory=dict)

    def __getitem__(self, node: str) -> LayerRange | None:
        return self.ranges.get(node)

    @property
    def used_nodes(self) -> list[str]:
        return list(self.ranges)

    def validate(self, node_names: list[str], num_layers: int, max_layers: Mapping[str, int] | None = None) -> None:
        """Raise InfeasiblePlacement naming the node if a range is empty, outside the model or too big."""
        for name, rng in self.ranges.items():
            if name not in node_names:
                raise InfeasiblePlacement(f"placement names unknown node {name!r}; the cluster has {node_names}")
            if not 0 <= rng.start < rng.end <= num_layers:
                raise InfeasiblePlacement(
                    f"node {name!r}: layers {rng} outside the model's [0, {num_layers}) or empty"
                )
            if max_layers is not None and rng.size > max_layers.get(name, 0):
                raise InfeasiblePlacement(
                    f"node {name!r}: holds {rng.size} layers but fits at most {max_layers.get(name, 0)}"
                )


def arc_allowed(src: LayerRange | None, dst: LayerRange | None, num_layers: int, partial: bool = False) -> bool:
    """Layer-connectivity rule (helix-spec §3.1); None stands for the coordinator.

    Exact chaining: src ends where dst starts. Partial inference: dst may start earlier and run only its
    layers past src's end (it must still add at least one layer).
    """
    if src is None and dst is None:
        return False
    if src is None:
        return dst.start == 0
    if dst is None:
        return src.end == num_layers
    if partial:
        return dst.start <= src.end < dst.end
    return src.end == dst.start
