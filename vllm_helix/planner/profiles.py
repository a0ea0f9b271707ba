"""GPU profiles: per-layer latency tables, KV block counts and batch caps of one (model, GPU type).

The bundled profiles (`vllm_helix/data/profiles/*.json`) are the reference system's measurements
(see data/README.md). A profile file measured elsewhere (`vllm-helix profile`, a later feature) has the
same JSON shape and can be passed by path.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from vllm_helix.errors import ClusterSpecError

BLOCK_TOKENS = 16  # vLLM KV block size the reference measured with


@dataclass(frozen=True, slots=True)
class LatencyTable:
    """Piecewise-linear seconds-per-layer as a function of batch size (reference interpolation rule)."""

    xs: tuple[float, ...]
    seconds: tuple[float, ...]

    def __call__(self, x: float) -> float:
        """Seconds for one layer; x outside the measured grid is an error (the reference asserts)."""
        if not self.xs[0] <= x <= self.xs[-1]:
            raise ValueError(f"batch size {x} outside the profiled range [{self.xs[0]}, {self.xs[-1]}]")
        right = bisect.bisect_left(self.xs, x)
        if self.xs[right] == x:
            return self.seconds[right]
        left = right - 1
        x0, x1 = self.xs[left], self.xs[right]
        y0, y1 = self.seconds[left], self.seconds[right]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass(frozen=True, slots=True)
class GPUProfile:
    """Measurements of one model on one GPU type; dicts are indexed by layers held k = 1..max_layers."""

    model: str
    gpu: str
    max_layers: int
    kv_blocks: dict[int, int]  # vLLM 16-token blocks available with k layers loaded
    prompt_max_requests: dict[int, int]
    decode_max_tokens: dict[int, int]
    prompt_latency: LatencyTable  # x = prompt tokens in the batch
    decode_latency: LatencyTable  # x = decode sequences in the batch

    def kv_slots(self, k: int) -> int:
        """Token-layer KV slots with k layers loaded (reference `kv_cache_capacity`)."""
        return BLOCK_TOKENS * self.kv_blocks[k] * k


def profile_from_dict(data: dict, source: str) -> GPUProfile:
    try:
        max_layers = int(data["max_num_layers"])

        def per_k(key: str) -> dict[int, int]:
            table = {int(k): int(v) for k, v in data[key].items()}
            missing = [k for k in range(1, max_layers + 1) if k not in table]
            if missing:
                raise ClusterSpecError(f"{source}: {key}: no entry for k = {missing}")
            return table

        def latency(key: str) -> LatencyTable:
            rows = sorted((float(x), float(ms) * 1e-3) for x, ms in data[key])
            if len(rows) < 2:
                raise ClusterSpecError(f"{source}: {key}: needs at least two rows")
            return LatencyTable(tuple(r[0] for r in rows), tuple(r[1] for r in rows))

        return GPUProfile(
            model=str(data["model"]), gpu=str(data["gpu"]), max_layers=max_layers,
            kv_blocks=per_k("vllm_num_blocks"), prompt_max_requests=per_k("prompt_max_requests"),
            decode_max_tokens=per_k("decode_max_tokens"),
            prompt_latency=latency("prompt_layer_ms"), decode_latency=latency("decode_layer_ms"),
        )
    except KeyError as exc:
        raise ClusterSpecError(f"{source}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ClusterSpecError(f"{source}: malformed profile: {exc}") from None


def bundled_gpu_types(model_profile: str) -> list[str]:
    prefix = f"{model_profile}_"
    folder = resources.files("vllm_helix.data") / "profiles"
    return sorted(p.name[len(prefix):-5] for p in folder.iterdir() if p.name.startswith(prefix))


@cache
def load_profile(model_profile: str, gpu_type: str) -> GPUProfile:
    """Bundled profile for (model, GPU type), e.g. ('llama2_70b', 'A100')."""
    resource = resources.files("vllm_helix.data") / "profiles" / f"{model_profile}_{gpu_type}.json"
    if not resource.is_file():
        known = bundled_gpu_types(model_profile)
        if not known:
            raise ClusterSpecError(f"no bundled profiles for model {model_profile!r}")
        raise ClusterSpecError(f"unknown GPU type {gpu_type!r} for {model_profile}; profiled types: {known}")
    return profile_from_dict(json.loads(resource.read_text()), source=resource.name)


def load_profile_file(path: str | Path) -> GPUProfile:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ClusterSpecError(f"{path}: cannot read profile: {exc}") from None
    return profile_from_dict(data, source=str(path))
