"""Timings -> the planner's profile JSON (the bundled profiles' schema, `measured: true`, metadata).

A batch through k layers takes `overhead + k * per_layer(x)`: a straight line in k for each batch shape x,
fitted by least squares over the measured layer counts. Its slope is the per-layer time the bundled
schema holds (`prompt_layer_ms`, `decode_layer_ms`); the intercepts (input preparation, the scheduler
output: large for a small model on a CPU) become `step_overhead_ms`, which the planner and the simulator add
once per batch. `sampling_ms` (per decode batch size) is what the last range adds to a batch (final norm,
LM head, sampling), which the simulator adds to the last node's batches. KV capacity is what a serving node
gets: `kv_fraction` of the memory available before loading, over k layers' K+V per token, in the bundled
schema's 16-token blocks.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from vllm_helix.node.config import WorkerConfig
from vllm_helix.planner.profiles import BLOCK_TOKENS
from vllm_helix.planner.router import MAX_PROMPT_TOKENS_PER_REQUEST
from vllm_helix.profiling.measure import Memory, Timings
from vllm_helix.profiling.sweep import Sweep

# noise on a loaded machine must not make a layer, or what the last range adds, free or negative: a profile refuses a
# zero latency for a non-empty batch (planner/profiles.py), and nothing a GPU runs takes no time
NOISE_FLOOR_S = 1e-9


def fit_line(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """(intercept, slope) of seconds vs layers; one point is all slope. Neither is negative."""
    if len({k for k, _ in points}) < 2:
        k, t = points[0]
        return 0.0, t / k
    mean_k = statistics.fmean(k for k, _ in points)
    mean_t = statistics.fmean(t for _, t in points)
    slope = sum((k - mean_k) * (t - mean_t) for k, t in points) / sum((k - mean_k) ** 2 for k, _ in points)
    slope = max(slope, NOISE_FLOOR_S)
    return max(mean_t - slope * mean_k, 0.0), slope


def kv_tokens(memory: Memory, fraction: float, k: int) -> int:
    return int(fraction * memory.available_bytes / (k * memory.kv_bytes_per_token_layer))


def max_layers(memory: Memory, fraction: float, total: int, longest: int) -> int:
    """Most layers one node may hold: weights in the memory the KV cache leaves, and room for one sequence."""
    best = 0
    for k in range(1, total + 1):
        fits = k * memory.layer_weight_bytes <= (1 - fraction) * memory.available_bytes
        if fits and kv_tokens(memory, fraction, k) >= longest:
            best = k
    return best


def profile_document(*, model: str, gpu: str, timings: Timings, memory: Memory, sweep: Sweep, total_layers: int,
                     most_layers: int, config: WorkerConfig, fraction: float, metadata: dict[str, Any]) -> dict:
    overheads: list[float] = []

    def rows(series: dict[int, list[tuple[int, float]]]) -> list[list[float]]:
        out = [[0, 0.0]]
        for x in sorted(series):
            intercept, slope = fit_line(series[x])
            overheads.append(intercept)
            out.append([x, round(slope * 1e3, 6)])
        return out

    prompt: dict[int, list[tuple[int, float]]] = {}
    for (k, x), t in timings.prompt.items():
        prompt.setdefault(x, []).append((k, t))
    by_context: dict[int, dict[int, list[tuple[int, float]]]] = {}
    for (k, c, d), t in timings.decode.items():
        by_context.setdefault(c, {}).setdefault(d, []).append((k, t))
    decode_rows = {c: rows(series) for c, series in sorted(by_context.items())}
    middle = sorted(decode_rows)[len(decode_rows) // 2]  # the bundled schema has one decode table
    layers = range(1, most_layers + 1)
    return {
        "model": model,
        "gpu": gpu,
        "measured": True,
        "max_num_layers": most_layers,
        "vllm_num_blocks": {str(k): kv_tokens(memory, fraction, k) // BLOCK_TOKENS for k in layers},
        "prompt_max_requests": {str(k): max(1, config.max_num_batched_tokens // MAX_PROMPT_TOKENS_PER_REQUEST)
                                for k in layers},
        "decode_max_tokens": {str(k): config.max_num_seqs for k in layers},
        "prompt_layer_ms": rows(prompt),
        "decode_layer_ms": decode_rows[middle],
        "step_overhead_ms": round(statistics.median(overheads) * 1e3, 6),
        "decode_layer_ms_by_context": {str(c): r for c, r in decode_rows.items()},
        **({"sampling_ms": [[0, 0.0], *([d, round(max(t, NOISE_FLOOR_S) * 1e3, 6)]
                                        for d, t in sorted(timings.sampling.items()))]}
           if timings.sampling else {}),
        "metadata": {
            **metadata,
            "total_layers": total_layers,
            "kv_fraction": fraction,
            "available_bytes": memory.available_bytes,
            "layer_weight_bytes": memory.layer_weight_bytes,
            "kv_bytes_per_token_layer": memory.kv_bytes_per_token_layer,
            "decode_context": middle,
            "sweep": {"layers": sorted({k for k, _ in timings.prompt}), "prompt_tokens": list(sweep.prompt_tokens),
                      "decode_seqs": list(sweep.decode_seqs), "contexts": list(sweep.contexts),
                      "repeats": sweep.repeats},
            "raw_ms": {
                "prompt": [[k, x, round(t * 1e3, 4)] for (k, x), t in sorted(timings.prompt.items())],
                "decode": [[k, c, d, round(t * 1e3, 4)] for (k, c, d), t in sorted(timings.decode.items())],
            },
        },
    }
