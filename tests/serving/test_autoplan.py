"""`vllm serve MODEL --executor helix --helix-cluster cluster.yaml`: planned at start-up, written, served."""

from __future__ import annotations

import pytest
import yaml
from serve_helpers import COMMON, completion_tokens

from vllm_helix.planner.files import load_plan
from vllm_helix.vllm_server import VllmServer

pytestmark = [pytest.mark.engine, pytest.mark.slow]

TWO_NODES = {
    "name": "pair",
    "coordinator": {"address": "local"},
    "nodes": [{"name": "big", "gpu": "cpu", "gpus": 2, "tp": 1, "vram": "4GB", "address": "local"},  # one process
              {"name": "small", "gpu": "cpu", "gpus": 1, "vram": "4GB", "address": "local"}],
    "default_link": {"bandwidth": "10Gbps", "latency": "0.1ms"},
}


def test_serve_plans_the_cluster_at_start_up_and_serves_that_plan(tiny_llama_path, tmp_path):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(TWO_NODES))
    routes = tmp_path / "routes.log"
    server = VllmServer(tiny_llama_path, ["--executor", "helix", "--helix-cluster", str(cluster),
                                          "--helix-plan-time-limit", "10", "--helix-route-log", str(routes),
                                          *COMMON], log_path=tmp_path / "serve.log")
    with server as url:
        tokens = completion_tokens(url, tiny_llama_path)
    assert len(tokens) == 5 and all(len(t) == 24 for t in tokens)
    plan = load_plan(tmp_path / "cluster.plan.yaml")  # written beside the cluster file
    assert plan.throughput_model == "estimate" and plan.flow.value > 0
    log = server.log_path.read_text()
    assert f"Helix plan for pair (estimate throughput, milp, 10 s limit), written to {tmp_path}" in log
    assert "max flow:" in log
    used = {name for name, flow in plan.flow.node_flow.items() if flow > 0}
    routed = {hop.split(" [")[0] for line in routes.read_text().splitlines() for hop in line.split(" -> ")[1:-1]}
    assert routed and routed <= used  # requests went over the planned nodes
