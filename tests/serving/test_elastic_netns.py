"""Elastic serving across a cut link: a worker in a network namespace drops off the network mid-stream.

Plan: elastic-a [0, 2) and elastic-b [2, 8) local, elastic-x [2, 8) a `vllm-helix worker` in its own namespace
(plain TCP on private addresses, --helix-insecure on both sides). With 16 greedy streams in flight, x's link
goes down (every packet dropped): the coordinator counts x lost when its heartbeats stop, every stream
completes with the tokens of an undisturbed run, and when the link comes back x rejoins on its own (it lost
the coordinator, forgot its requests and says Hello) and routes pass through it again.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
import sys

import pytest
from elastic_helpers import MAX_TOKENS, health, run_workload, wait_for
from netns_hosts import NEEDS_ROOT, sh
from serve_helpers import COMMON, post, write_plan

from vllm_helix.coordinator.local_nodes import free_port
from vllm_helix.vllm_server import VllmServer

pytestmark = [*NEEDS_ROOT, pytest.mark.engine, pytest.mark.slow]
ENV = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="nobind")


class _Cluster:
    def __init__(self, url: str, model, routes):
        self.url, self.model, self.routes = url, model, routes

    def route_lines(self) -> list[str]:
        return self.routes.read_text().splitlines() if self.routes.exists() else []


def test_a_cut_link_costs_no_request_and_the_node_rejoins_when_it_heals(tiny_llama_path, make_host, tmp_path):
    host = make_host("1gbit", 1)
    nodes = {"name": "elastic-netns", "coordinator": {"address": f"{host.gateway}:{free_port()}"},
             "nodes": [{"name": "elastic-a", "gpu": "cpu", "gpus": 4, "tp": 1, "vram": "4GB", "address": "local"},
                       {"name": "elastic-b", "gpu": "cpu", "gpus": 2, "tp": 1, "vram": "4GB", "address": "local"},
                       {"name": "elastic-x", "gpu": "cpu", "gpus": 2, "tp": 1, "vram": "4GB",
                        "address": f"{host.address}:7411"}],
             "default_link": {"bandwidth": "1Gbps", "latency": "1ms"}}
    plan = write_plan(tmp_path, tiny_llama_path, nodes,
                      {"elastic-a": [0, 2], "elastic-b": [2, 8], "elastic-x": [2, 8]})
    argv = [sys.executable, "-m", "vllm_helix.cli", "worker", "--plan", str(plan), "--node", "elastic-x", "--model",
            str(tiny_llama_path), "--dtype", "float32", "--max-model-len", "512", "--max-num-batched-tokens", "64",
            "--max-num-seqs", "32", "--enforce-eager", "--helix-insecure"]
    with open(tmp_path / "elastic-x.log", "w") as log:
        worker = subprocess.Popen(host.command(*argv), stdout=log, stderr=subprocess.STDOUT, env=ENV)
    routes = tmp_path / "routes.log"
    server = VllmServer(tiny_llama_path, ["--executor", "helix", "--helix-plan", str(plan), "--enforce-eager",
                                          "--helix-insecure", "--helix-route-log", str(routes), *COMMON],
                        log_path=tmp_path / "serve.log")
    try:
        with server as url:
            cluster = _Cluster(url, tiny_llama_path, routes)
            undisturbed = run_workload(cluster)
            assert all(finish == "length" and len(tokens) == MAX_TOKENS for tokens, finish in undisturbed)
            before = len(cluster.route_lines())

            def cut():
                assert any("elastic-x" in line for line in cluster.route_lines()[before:])
                sh("ip", "link", "set", host.root_dev, "down")

            try:
                assert run_workload(cluster, cut) == undisturbed
                assert "Helix node elastic-x lost: its link was lost" in server.log_path.read_text()
                assert health(url) == 200
            finally:
                sh("ip", "link", "set", host.root_dev, "up")
            wait_for(lambda: "Helix node elastic-x [2, 8) rejoined" in server.log_path.read_text(), 120,
                     "elastic-x rejoined after the link came back")
            healed = len(cluster.route_lines())

            def wave():
                with cf.ThreadPoolExecutor(4) as pool:
                    list(pool.map(lambda i: post(url, "/completions", {"model": str(tiny_llama_path),
                                                                       "prompt": f"{i} +", "max_tokens": 2,
                                                                       "temperature": 0}), range(4)))

            wait_for(lambda: any("elastic-x" in line for line in cluster.route_lines()[healed:]), 120,
                     "routes through elastic-x again", poke=wave)
    finally:
        worker.kill()
        worker.wait()
