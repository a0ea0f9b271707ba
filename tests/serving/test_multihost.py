"""Helix across hosts: two workers in network namespaces behind shaped links (netem), any start order.

The coordinator (`vllm serve --executor helix`) runs in the root namespace; worker `near` starts before
it, worker `far` several seconds after it. Greedy tokens must equal plain vLLM's.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from netns_hosts import NEEDS_ROOT
from serve_helpers import COMMON, completion_tokens, write_plan

from vllm_helix.vllm_server import VllmServer

pytestmark = [*NEEDS_ROOT, pytest.mark.engine, pytest.mark.slow]


def test_workers_in_namespaces_behind_netem_serve_the_same_tokens(tiny_llama_path, plain, make_host, tmp_path):
    near, far = make_host("500mbit", 2), make_host("100mbit", 10)
    cluster = {
        "name": "two-hosts",
        "coordinator": {"address": f"{near.gateway}:7300"},
        "nodes": [{"name": "near", "gpu": "cpu", "vram": "4GB", "address": f"{near.address}:7301"},
                  {"name": "far", "gpu": "cpu", "vram": "4GB", "address": f"{far.address}:7302"}],
        "default_link": {"bandwidth": "100Mbps", "latency": "10ms"},
    }
    plan = write_plan(tmp_path, tiny_llama_path, cluster, {"near": [0, 3], "far": [3, 8]})

    def worker(host, name):
        argv = [sys.executable, "-m", "vllm_helix.cli", "worker", "--plan", str(plan), "--node", name, "--model",
                str(tiny_llama_path), "--kv-fraction", "0.01", "--dtype", "float32", "--max-model-len", "512"]
        with open(tmp_path / f"{name}.log", "w") as log:
            return subprocess.Popen(host.command(*argv), stdout=log, stderr=subprocess.STDOUT)

    workers = [worker(near, "near")]
    server = VllmServer(tiny_llama_path, ["--executor", "helix", "--helix-plan", str(plan),
                                          "--helix-start-timeout", "240", *COMMON], log_path=tmp_path / "serve.log")
    late = threading.Timer(8.0, lambda: workers.append(worker(far, "far")))
    late.start()
    try:
        with server as url:
            started = time.monotonic()
            ours = completion_tokens(url, tiny_llama_path)
            elapsed = time.monotonic() - started
            assert ours == completion_tokens(plain, tiny_llama_path)
        print(f"links: {near.shaping} / {far.shaping}; 5 requests x 24 tokens in {elapsed:.1f} s")
    finally:
        late.cancel()
        for process in workers:
            process.terminate()
            process.wait(30)
    assert all(p.returncode is not None for p in workers)
