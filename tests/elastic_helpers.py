"""The elastic tests' workload: concurrent streaming greedy completions, and waiting for the cluster to change."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import json
import os
import time
import urllib.request

WORKLOAD = [f"{i} little robots counted {'the stars ' * (i % 4 + 1)}in the night sky, and then" for i in range(16)]
MAX_TOKENS = 40
PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_DETACH, WALL = 0x4206, 0x4207, 17, 0x40000000  # <sys/ptrace.h>, __WALL


def stream(url: str, model, prompt: str, progress: list[int] | None = None) -> tuple[list[int], str]:
    """Token ids and finish reason of one streaming greedy completion; `progress` counts the chunks seen."""
    body = {"model": str(model), "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
            "stream": True, "return_token_ids": True}
    request = urllib.request.Request(url + "/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    tokens, finish = [], None
    with urllib.request.urlopen(request, timeout=600) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return tokens, f"error: {chunk['error']}"
            choice = chunk["choices"][0]
            tokens += choice.get("token_ids") or []
            finish = choice.get("finish_reason") or finish
            if progress is not None:
                progress.append(1)
    return tokens, finish


def run_workload(cluster, disturb=None) -> list[tuple[list[int], str]]:
    """The 16 streams at once against `cluster.url`; `disturb()` runs once every stream has its first tokens."""
    progress: list[list[int]] = [[] for _ in WORKLOAD]
    with cf.ThreadPoolExecutor(len(WORKLOAD)) as pool:
        futures = [pool.submit(stream, cluster.url, cluster.model, p, progress[i]) for i, p in enumerate(WORKLOAD)]
        if disturb is not None:
            deadline = time.monotonic() + 600
            while not all(len(p) >= 3 for p in progress) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert all(len(p) < MAX_TOKENS for p in progress), "the workload ended before the disturbance"
            disturb()
        return [f.result(timeout=900) for f in futures]


def wait_for(condition, timeout_s: float, what: str, poke=None) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what} within {timeout_s:.0f} s"
        if poke is not None:
            poke()
        time.sleep(0.5)
    return time.monotonic() - started


def health(url: str) -> int:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as response:
        return response.status


@contextlib.contextmanager
def main_thread_stopped(pid: int):
    """Stop only the main thread of process `pid` (a ptrace interrupt; root), as a step hung in a wedged kernel
    would: its other threads, the transport's I/O thread answering heartbeats among them, run on. Call from one
    thread (ptrace ties the stop to the thread that made it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    if libc.ptrace(PTRACE_SEIZE, pid, None, None) != 0:
        raise OSError(ctypes.get_errno(), f"ptrace cannot seize thread {pid}")
    try:
        libc.ptrace(PTRACE_INTERRUPT, pid, None, None)
        os.waitpid(pid, WALL)  # until it is stopped
        yield
    finally:
        libc.ptrace(PTRACE_DETACH, pid, None, None)  # it runs on
