"""Executor-test fixtures: engines share the 2 cores, so no OpenMP thread binding."""

import os

os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
