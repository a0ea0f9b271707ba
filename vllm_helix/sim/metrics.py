"""Metrics collected during a run, and their definitions.

Glossary (window = [t0 + warm-up, t0 + warm-up + duration], t0 = when the model is loaded):

* iteration — one prompt pass (P tokens) or one decode step (1 token) of a query, coordinator to coordinator.
* decode throughput — decode iterations that reach the coordinator inside the window / window length (tok/s).
* total throughput — prompt + decode tokens of the iterations that reach the coordinator inside the window /
  window length (tok/s); `ratio_to_max_flow` divides it by the plan's max flow.
* reference total throughput — the reference's "Total time usage" figure: tokens of every finished iteration
  / time of the last finish (absolute, so it includes model loading and warm-up).
* prompt latency — prompt reaches the coordinator minus query arrival (includes waiting at the coordinator;
  ~ time to first token).
* decode latency — decode step reaches the coordinator minus its issue time (~ time per output token).
  Latencies are over iterations finishing inside the window: mean, p50, p95, p99.
* utilization — fraction of time a node spends executing batches (per sample interval and over the window).
* KV usage — real KV slots in use / the node's capacity (sampled); overflows count additions past capacity.
"""

from __future__ import annotations

from array import array

import numpy as np


class Metrics:
    def __init__(self, window_start: float, window_end: float, bucket_s: float):
        self.window_start, self.window_end = window_start, window_end
        self.bucket_s = bucket_s
        self.prompt_latency = array("d")
        self.decode_latency = array("d")
        self.decode_in_window = 0
        self.tokens_in_window = 0
        self.all_tokens = 0
        self.last_finish = 0.0
        self.decode_per_bucket: dict[int, int] = {}
        self.tokens_per_bucket: dict[int, int] = {}

    def on_iteration_done(self, now: float, prompt: bool, tokens: int, latency: float) -> None:
        self.all_tokens += tokens
        self.last_finish = now
        b = int(now // self.bucket_s)
        self.tokens_per_bucket[b] = self.tokens_per_bucket.get(b, 0) + tokens
        if not prompt:
            self.decode_per_bucket[b] = self.decode_per_bucket.get(b, 0) + 1
        if self.window_start <= now <= self.window_end:
            self.tokens_in_window += tokens
            if prompt:
                self.prompt_latency.append(latency)
            else:
                self.decode_in_window += 1
                self.decode_latency.append(latency)

    def throughput_series(self) -> dict[str, list[float]]:
        last = max(self.tokens_per_bucket, default=-1) + 1
        return {
            "time_s": [(b + 1) * self.bucket_s for b in range(last)],
            "decode_tokens_per_s": [self.decode_per_bucket.get(b, 0) / self.bucket_s for b in range(last)],
            "total_tokens_per_s": [self.tokens_per_bucket.get(b, 0) / self.bucket_s for b in range(last)],
        }


def latency_stats(values: array) -> dict[str, float]:
    if not len(values):
        return {"count": 0, "mean": float("nan"), "p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    a = np.frombuffer(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"count": int(a.size), "mean": float(a.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


def cdf(values: array, points: int = 200) -> tuple[list[float], list[float]]:
    if not len(values):
        return [], []
    a = np.sort(np.frombuffer(values, dtype=np.float64))
    idx = np.linspace(0, a.size - 1, min(points, a.size)).astype(int)
    return a[idx].tolist(), ((idx + 1) / a.size).tolist()
