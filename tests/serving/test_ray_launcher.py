"""`vllm serve --executor helix --helix-launcher ray` on a local Ray cluster of three Ray nodes (one per plan node,
each with its own `helix_node:<name>` resource): token equality with plain vLLM, a killed actor restarted, and a
plan node without a Ray node as a clear error. One server for every engine test here."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error

import psutil
import pytest
import yaml
from serve_helpers import CLUSTER, COMMON, PROMPTS, completion_tokens, post, write_plan

from vllm_helix.errors import StartupError
from vllm_helix.planner.files import load_cluster
from vllm_helix.vllm_server import VllmServer

ray = pytest.importorskip("ray", reason="the Ray launcher is an optional extra: pip install 'vllm-helix[ray]'")
NODES = [n["name"] for n in CLUSTER["nodes"]]  # head, fast, slow


@pytest.fixture(scope="module")
def ray_cluster():
    """Three Ray nodes on this host, each with the resource of one plan node (and one CPU)."""
    from ray.cluster_utils import Cluster

    small = {"num_cpus": 1, "object_store_memory": 80 << 20}
    cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False,
                                                            "resources": {f"helix_node:{NODES[0]}": 1}})
    for name in NODES[1:]:
        cluster.add_node(**small, resources={f"helix_node:{name}": 1})
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def ray_helix(ray_cluster, tiny_llama_path, tmp_path_factory):
    """The branching 3-node plan (head [0, 2) -> fast | slow [2, 8)) with CURVE keys (the Ray nodes' addresses are
    not loopback), served with every node a Ray actor. Yields (url, server)."""
    tmp = tmp_path_factory.mktemp("ray")
    plan = write_plan(tmp, tiny_llama_path)
    subprocess.run([sys.executable, "-m", "vllm_helix.cli", "keys", "--plan", plan], check=True, capture_output=True)
    server = VllmServer(tiny_llama_path, ["--executor", "helix", "--helix-plan", str(plan), "--helix-launcher", "ray",
                                          "--helix-kv-cache-bytes", str(6 << 20), *COMMON],
                        log_path=tmp / "serve.log", env={"RAY_ADDRESS": ray_cluster.address})
    with server as url:
        yield url, server


def worker_and_actor(cluster, node: str) -> tuple[psutil.Process, psutil.Process]:
    """The `vllm-helix worker` of `node` under this Ray cluster, and its parent: the node's actor."""
    raylets = {p.process.pid for n in cluster.list_all_nodes() for p in n.all_processes["raylet"]}
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "worker" in cmd and f"--node={node}" in " ".join(cmd).replace("--node ", "--node="):
            actor = proc.parent()
            if actor is not None and actor.ppid() in raylets:
                return proc, actor
    raise AssertionError(f"no worker of {node} under this Ray cluster")


@pytest.mark.engine
@pytest.mark.slow
def test_ray_launched_plan_matches_plain_vllm(ray_helix, plain, tiny_llama_path):
    assert completion_tokens(ray_helix[0], tiny_llama_path) == completion_tokens(plain, tiny_llama_path)
    placed = re.search(r"Helix: Ray placed (.*)", ray_helix[1].log_path.read_text())
    assert placed and sorted(re.findall(r"(\w+) at [\d.]+:\d+", placed.group(1))) == sorted(NODES)


@pytest.mark.engine
@pytest.mark.slow
def test_a_killed_actor_is_restarted_and_the_server_goes_on(ray_helix, ray_cluster, plain, tiny_llama_path):
    """SIGKILL `slow`'s actor: its worker dies with it; the launcher places a new actor on the same Ray node and
    address, which starts the worker again; requests keep being answered (through `fast` while `slow` is down)."""
    url, server = ray_helix
    worker, actor = worker_and_actor(ray_cluster, "slow")
    os.kill(actor.pid, signal.SIGKILL)
    worker.wait(30)  # PR_SET_PDEATHSIG: the worker does not outlive its actor
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            new_worker, new_actor = worker_and_actor(ray_cluster, "slow")
            break
        except AssertionError:
            time.sleep(1)
    else:
        raise AssertionError("the killed actor was not restarted:\n" + server.log_tail())
    assert new_actor.pid != actor.pid and new_worker.pid != worker.pid
    log = server.log_path.read_text()
    assert "node slow stopped on Ray" in log and "Helix node slow lost" in log
    assert completion_tokens(url, tiny_llama_path) == completion_tokens(plain, tiny_llama_path)
    with pytest.raises(urllib.error.HTTPError) as info:  # still validates input: the server is up, not wedged
        post(url, "/completions", {"model": str(tiny_llama_path), "prompt": PROMPTS[0], "max_tokens": -1})
    assert info.value.code == 400


def test_a_plan_node_without_a_ray_node_is_a_clear_error(ray_cluster, tiny_llama_path, tmp_path, monkeypatch):
    """A node with neither a `helix_node:` resource nor an address on a Ray node's IP: named at start-up."""
    from vllm_helix.coordinator.ray_nodes import RayNodes
    from vllm_helix.planner.files import load_plan

    cluster = yaml.safe_load(yaml.safe_dump(CLUSTER))
    cluster["nodes"][1]["name"] = "ghost"
    cluster["nodes"][2].update(name="far", address="198.51.100.7:6100")  # an IP no Ray node has
    plan = load_plan(write_plan(tmp_path, tiny_llama_path, cluster, {"head": [0, 2], "ghost": [2, 8],
                                                                        "far": [2, 8]}))
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster.address)
    launcher = RayNodes()
    with pytest.raises(StartupError, match=r"no Ray node matches Helix nodes far \(address 198.51.100.7\), ghost: "):
        launcher.resolve_addresses(plan)
    assert launcher.nodes == {}  # nothing placed


def test_discover_ray_writes_a_cluster_file_of_the_ray_nodes(ray_cluster, tmp_path):
    """`vllm-helix discover --ray`: a probe actor on each Ray node, named by its `helix_node:` resource."""
    out = tmp_path / "cluster.yaml"
    done = subprocess.run([sys.executable, "-m", "vllm_helix.cli", "discover", "--ray", "-o", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAY_ADDRESS": ray_cluster.address})
    assert done.returncode == 0, done.stderr
    cluster = load_cluster(out)
    assert sorted(n.name for n in cluster.nodes) == sorted(NODES)
    assert all(n.gpu == "cpu" and n.vram_bytes > 1e9 for n in cluster.nodes)
    assert len(cluster.links) == 12 and all(lk.bandwidth_bytes_per_s > 1e6 for lk in cluster.links)
