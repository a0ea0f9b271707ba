"""Monkey-patches of vLLM that vllm-helix cannot avoid: one per file, each listed here.

- `max_concurrent_batches.py` patches `VllmConfig.max_concurrent_batches`.
  Why: EngineCore keeps that many batches in flight but derives it only from the pipeline-parallel size;
  the Helix executor needs `--helix-depth` batches in flight to keep every node busy.
  Upstream: none yet; an executor-provided depth would remove it.
"""

from __future__ import annotations


def apply_all() -> None:
    from vllm_helix.executor.patches import max_concurrent_batches

    max_concurrent_batches.apply()
