"""Monkey-patches of vLLM that vllm-helix cannot avoid: one per file, each listed here.

| file | target | why | upstream |
|---|---|---|---|
| max_concurrent_batches.py | `VllmConfig.max_concurrent_batches` | EngineCore keeps `max_concurrent_batches` batches in flight but derives it only from pipeline-parallel size; the Helix executor needs `--helix-depth` in flight to keep all nodes busy. | none yet: an executor-provided depth would remove it |
"""

from __future__ import annotations


def apply_all() -> None:
    from vllm_helix.executor.patches import max_concurrent_batches

    max_concurrent_batches.apply()
