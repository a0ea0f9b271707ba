"""Monkey-patches of vLLM that vllm-helix cannot avoid: one per file, each listed here.

- `max_concurrent_batches.py` patches `VllmConfig.max_concurrent_batches`.
  Why: EngineCore keeps that many batches in flight but derives it only from the pipeline-parallel size;
  the Helix executor needs `--helix-depth` batches in flight to keep every node busy.
  Upstream: none yet; an executor-provided depth would remove it.
- `batch_queue.py` makes `EngineCore.batch_queue` a property, so that a Helix engine gets a queue that returns
  batches in the order they finish. Why: vLLM waits for the oldest batch in flight, which couples routes of
  different speeds (a fast replica waits for a slow one); a batch still waits for older ones that share a request
  with it (--helix-async), so each request's outputs arrive in order. Upstream: none yet.
- `request_checks.py` wraps `InputProcessor._validate_params` so that a Helix server answers HTTP 400 for the
  SamplingParams fields its nodes cannot carry (`vllm_helix.unsupported`). Why: vLLM has no hook for an executor to
  refuse request features. Upstream: none yet.
"""

from __future__ import annotations


def apply_all() -> None:
    from vllm_helix.coordinator.patches import batch_queue, max_concurrent_batches, request_checks

    max_concurrent_batches.apply()
    batch_queue.apply()
    request_checks.apply()
