"""GPU profiles: per-layer latency tables, KV block counts and batch caps of one (model, GPU type).

The bundled profiles (`vllm_helix/data/profiles/*.json`) are the reference system's measurements
(see data/README.md), keyed by the model's `profile_name`. Measured profiles (`vllm-helix profile`) have
the same JSON shape plus `step_overhead_ms` and metadata; they are keyed by the model's name and the
device (`gpu`), registered for this process by `load_profile_dir` (`--profiles DIR`) or from a plan that
embeds them, and win over bundled ones: `profile_for(model, gpu_type)` is the one lookup.
"""

from __future__ import annotations

import bisect
import json
import math
import reprlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.model import MAX_DIMENSION, MAX_LAYERS, ModelSpec
from vllm_helix.text_files import read_json

BLOCK_TOKENS = 16  # vLLM KV block size the reference measured with


@dataclass(frozen=True, slots=True)
class LatencyTable:
    """Piecewise-linear seconds-per-layer as a function of batch size (reference interpolation rule)."""

    xs: tuple[float, ...]
    seconds: tuple[float, ...]
    extrapolate: bool = False  # measured tables: beyond the last row, continue its last segment if it rises

    def __call__(self, x: float) -> float:
        """Seconds for one layer; x outside the measured grid is an error (the reference asserts)."""
        if self.extrapolate and x > self.xs[-1]:
            # a noisy measurement can make the last segment fall; a larger batch never takes less time
            x0, x1, y0, y1 = self.xs[-2], self.xs[-1], self.seconds[-2], self.seconds[-1]
            return y1 + max(0.0, y1 - y0) * (x - x1) / (x1 - x0)
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
    step_overhead_s: float = 0.0  # per batch, whatever its layers (measured: input preparation)
    measured: bool = False  # from `vllm-helix profile` (not the reference's tables)
    # measured profiles: (context, decode table) at each context the sweep timed, ascending
    decode_by_context: tuple[tuple[int, LatencyTable], ...] = ()
    sampling: LatencyTable | None = None  # measured: what the last range adds per batch (x = sequences)

    def sampling_seconds(self, seqs: int) -> float:
        """Final norm, LM head and sampling of a batch of `seqs` sequences on the last range (0: not measured)."""
        return self.sampling(seqs) if self.sampling is not None and seqs > 0 else 0.0

    def decode_seconds(self, seqs: float, context: float | None = None) -> float:
        """One layer's decode step for `seqs` sequences with `context` tokens cached each (their mean):
        interpolated between the per-context tables around it (the nearest one beyond them), or the one
        decode table when the profile has no per-context tables or the context is not known."""
        tables = self.decode_by_context
        if context is None or not tables:
            return self.decode_latency(seqs)
        contexts = [c for c, _ in tables]
        right = bisect.bisect_left(contexts, context)
        if right == 0 or right == len(tables):
            return tables[min(right, len(tables) - 1)][1](seqs)
        (c0, low), (c1, high) = tables[right - 1], tables[right]
        w = (context - c0) / (c1 - c0)
        return (1 - w) * low(seqs) + w * high(seqs)

    def kv_slots(self, k: int) -> int:
        """Token-layer KV slots with k layers loaded (reference `kv_cache_capacity`)."""
        return BLOCK_TOKENS * self.kv_blocks[k] * k


def profile_from_dict(data: dict, source: str) -> GPUProfile:
    """A profile document, checked: every problem is a ClusterSpecError naming the field (and row)."""
    if not isinstance(data, dict):
        raise ClusterSpecError(f"{source}: not a profile (expected a mapping, got {type(data).__name__})")
    try:
        max_layers = _positive_int(data["max_num_layers"], f"{source}: max_num_layers", limit=MAX_LAYERS)

        def per_k(key: str) -> dict[int, int]:
            table = data[key]
            if not isinstance(table, dict):
                raise ClusterSpecError(f"{source}: {key}: expected a layers -> count mapping")
            out = {_positive_int(k, f"{source}: {key}: key", digits=True): _positive_int(v, f"{source}: {key}[{k}]")
                   for k, v in table.items()}
            missing = [k for k in range(1, max_layers + 1) if k not in out]
            if missing:
                raise ClusterSpecError(f"{source}: {key}: no entry for k = {missing}")
            return out

        measured = data.get("measured", False)
        if not isinstance(measured, bool):
            raise ClusterSpecError(f"{source}: measured: expected true or false, got {measured!r}")

        def latency(key: str, table: Any = None) -> LatencyTable:
            return _latency_table(data[key] if table is None else table, f"{source}: {key}", measured)

        by_context = data.get("decode_layer_ms_by_context", {})
        if not isinstance(by_context, dict):
            raise ClusterSpecError(f"{source}: decode_layer_ms_by_context: expected a context -> table mapping")
        decode_by_context = tuple(sorted(
            (_positive_int(context, f"{source}: decode_layer_ms_by_context: key", digits=True),
             latency(f"decode_layer_ms_by_context[{context}]", table))
            for context, table in by_context.items()))

        overhead = _finite(data.get("step_overhead_ms", 0.0), f"{source}: step_overhead_ms") * 1e-3
        if overhead < 0:
            raise ClusterSpecError(f"{source}: step_overhead_ms: must be >= 0")

        return GPUProfile(
            model=str(data["model"]), gpu=str(data["gpu"]), max_layers=max_layers,
            kv_blocks=per_k("vllm_num_blocks"), prompt_max_requests=per_k("prompt_max_requests"),
            decode_max_tokens=per_k("decode_max_tokens"),
            prompt_latency=latency("prompt_layer_ms"), decode_latency=latency("decode_layer_ms"),
            step_overhead_s=overhead, measured=measured, decode_by_context=decode_by_context,
            sampling=latency("sampling_ms") if "sampling_ms" in data else None,
        )
    except ClusterSpecError:
        raise
    except KeyError as exc:
        raise ClusterSpecError(f"{source}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ClusterSpecError(f"{source}: malformed profile: {exc}") from None


MAX_LAYER_MS = 3.6e6  # one layer's batch time: an hour, as a link's latency (planner.cluster)


def _latency_table(rows: Any, where: str, extrapolate: bool) -> LatencyTable:
    """[[x, ms], ...]: x (batch tokens or sequences) >= 0 and distinct, ms finite, > 0 for a batch x > 0
    (a zero time divides a throughput by zero, a repeated x interpolates over a zero-width segment; the
    reference's tables start at (0, 0): an empty batch takes no time)."""
    if not isinstance(rows, list) or not all(isinstance(r, (list, tuple)) and len(r) == 2 for r in rows):
        raise ClusterSpecError(f"{where}: expected a list of [x, ms] rows")
    parsed = sorted((_finite(x, f"{where}[{i}][0] (x)"), _finite(ms, f"{where}[{i}][1] (ms)"))
                    for i, (x, ms) in enumerate(rows))
    if len(parsed) < 2:
        raise ClusterSpecError(f"{where}: needs at least two rows")
    if bad := [(x, ms) for x, ms in parsed if ms < 0 or (ms == 0 and x > 0)]:
        x, ms = bad[0]
        what = "negative latency" if ms < 0 else "zero latency"
        why = "" if ms < 0 else " (only an empty batch, x = 0, takes 0 ms)"
        raise ClusterSpecError(f"{where}: {what}: {ms:g} ms at x = {x:g}{why}")
    if slow := [(x, ms) for x, ms in parsed if ms > MAX_LAYER_MS]:  # else every route looks broken, not slow
        raise ClusterSpecError(f"{where}: {slow[0][1]:g} ms at x = {slow[0][0]:g}: a layer takes at most an hour "
                               f"({MAX_LAYER_MS:g} ms)")
    if parsed[0][0] < 0 or any(a[0] == b[0] for a, b in zip(parsed, parsed[1:], strict=False)):
        xs = [x for x, _ in parsed]
        raise ClusterSpecError(f"{where}: x (batch size) must be >= 0 and differ from row to row, got {xs}")
    return LatencyTable(tuple(x for x, _ in parsed), tuple(ms * 1e-3 for _, ms in parsed), extrapolate=extrapolate)


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ClusterSpecError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _positive_int(value: Any, where: str, digits: bool = False, limit: int = MAX_DIMENSION) -> int:
    """A count >= 1 (JSON object keys are strings: `digits` takes '3' too)."""
    if digits and isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():  # not '²'
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ClusterSpecError(f"{where}: expected an integer in 1..{limit}, got {reprlib.repr(value)}")
    return value


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
    return profile_from_dict(_read_json(Path(path)), source=str(path))


def _read_json(path: Path) -> dict:
    data = read_json(path, "profile")
    if not isinstance(data, dict):
        raise ClusterSpecError(f"{path}: not a profile (expected a JSON object)")
    return data


# ------------------------------------------------------------------------------ measured profiles

# (model name, device) -> (profile, its JSON document, which plans embed so they serve and simulate anywhere)
_MEASURED: dict[tuple[str, str], tuple[GPUProfile, dict]] = {}


def register_measured(data: dict, source: str) -> GPUProfile:
    """Use a measured profile document for its (model, gpu) in this process; returns it parsed."""
    if not isinstance(data, dict):
        raise ClusterSpecError(f"{source}: not a profile (expected a mapping, got {type(data).__name__})")
    if not data.get("measured"):
        raise ClusterSpecError(f"{source}: not a measured profile (no 'measured: true'; write it with "
                               "`vllm-helix profile`)")
    profile = profile_from_dict(data, source)
    _MEASURED[(profile.model, profile.gpu)] = (profile, data)
    return profile


def load_profile_dir(folder: str | Path) -> list[GPUProfile]:
    """Register every `*.json` in `folder` (`--profiles DIR`); a bad file is a one-line error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ClusterSpecError(f"--profiles {folder}: not a directory")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise ClusterSpecError(f"--profiles {folder}: no *.json profiles in it (write one with `vllm-helix profile`)")
    return [register_measured(_read_json(f), str(f)) for f in files]


def measured_profile(model_name: str, gpu_type: str) -> GPUProfile | None:
    entry = _MEASURED.get((model_name, gpu_type))
    return entry[0] if entry else None


def measured_documents(model_name: str, gpu_types: set[str]) -> list[dict]:
    """The registered documents for these devices of a model (what a plan embeds)."""
    return [_MEASURED[(model_name, g)][1] for g in sorted(gpu_types) if (model_name, g) in _MEASURED]


def profile_for(model: ModelSpec, gpu_type: str) -> GPUProfile:
    """The measured profile of (model, device) if one is registered, else the bundled one."""
    found = measured_profile(model.name, gpu_type)
    if found is not None:
        return found
    if model.profile_name is None:
        raise ClusterSpecError(
            f"model {model.name!r} has no profile for device {gpu_type!r}: measure one there "
            f"(`vllm-helix profile --model MODEL -o DIR/{gpu_type}.json`) and pass --profiles DIR")
    return load_profile(model.profile_name, gpu_type)


def has_profiles(model: ModelSpec, gpu_types: set[str]) -> bool:
    """Whether every one of these devices has a measured or bundled profile of the model."""
    bundled = set(bundled_gpu_types(model.profile_name)) if model.profile_name else set()
    return all(measured_profile(model.name, g) is not None or g in bundled for g in gpu_types)
