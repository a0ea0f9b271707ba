"""KV-cache expectation: admission control for new requests (helix-spec §5.1 "KV expectation").

Per node, `total` token-layer slots and an `avail` estimate. A request with prompt P is expected to
grow to X tokens; the reference uses X = int(P + 240*rho) (a constant output guess), the improved mode
passes the request's own expected length. Admission on node v needs
`avail_v - X * k_v >= (1 - hwm) * total_v`; a committed route reserves X per layer it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vllm_helix.planner.placement import LayerRange

AVG_OUTPUT_LEN = 240  # the reference's constant output-length guess


@dataclass(frozen=True, slots=True)
class KVParams:
    """hwm: fraction of KV slots admission may fill; output_ratio: rho in X = P + 240*rho."""

    hwm: float = 0.85
    output_ratio: float = 1.0


OFFLINE_KV = KVParams(0.85, 1.0)  # reference simulator, offline
ONLINE_KV = KVParams(0.9, 0.6)  # reference simulator, online
IMPROVED_KV = KVParams(0.95, 1.0)  # improved mode: exact own lengths allow a higher watermark


class KVExpectation:
    def __init__(self, ranges: Mapping[str, LayerRange], capacity: Mapping[str, int], num_layers: int,
                 params: KVParams):
        self.ranges = dict(ranges)
        self.total = {n: int(capacity[n]) for n in ranges}
        self.avail = dict(self.total)
        self.num_layers = num_layers
        self.params = params

    def expected_length(self, prompt_len: int, expected_output: int | None = None) -> int:
        if expected_output is None:
            return int(prompt_len + AVG_OUTPUT_LEN * self.params.output_ratio)
        return int(prompt_len + expected_output)

    def can_add(self, node: str, length: int) -> bool:
        need = length * self.ranges[node].size
        return self.avail[node] - need >= (1 - self.params.hwm) * self.total[node]

    def add(self, node: str, length: int, layers: int) -> None:
        self.avail[node] -= length * layers

    def remove(self, node: str, length: int, layers: int) -> None:
        self.avail[node] += length * layers

    def resize(self, node: str, capacity: int) -> None:
        """The node's capacity changed (it restarted): what is reserved on it stays reserved."""
        self.avail[node] += int(capacity) - self.total[node]
        self.total[node] = int(capacity)

    def bottleneck_usage(self) -> float:
        """Largest expected KV fill fraction over model layers (0..1+)."""
        free = [0.0] * self.num_layers
        total = [0.0] * self.num_layers
        for node, rng in self.ranges.items():
            f, t = self.avail[node] / rng.size, self.total[node] / rng.size
            for layer in range(rng.start, rng.end):
                free[layer] += f
                total[layer] += t
        return max(1 - f / t for f, t in zip(free, total, strict=False) if t > 0)

    def node_usage(self, node: str) -> float:
        return 1 - self.avail[node] / self.total[node]
