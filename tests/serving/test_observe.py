"""Knowing the cluster, end to end: `vllm-helix profile` of the tiny model on this CPU, a plan made from it that
serves, helix_* metrics on `vllm serve`'s /metrics that move during a burst, `vllm-helix status`, and the
plan-vs-real warning for a node slowed by a CPU cap (and none without one).

One profile (the short sweep, eager as the server) and one server serve the whole module: the 3-node chain of
examples/local3-placement.yaml, planned with the measured profile.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from serve_helpers import COMMON, post

from vllm_helix.planner.profiles import load_profile_file
from vllm_helix.status import scrape
from vllm_helix.vllm_server import VllmServer

pytestmark = [pytest.mark.engine, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
HOLD_S = 8  # the server's drift hold (a minute by default)
WINDOW_S = 12  # a little more than the drift window (coordinator/drift.py WINDOW_S)
CGROUP = Path(f"/sys/fs/cgroup/cpu/vllm-helix-test-{os.getpid()}")


def cli(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "vllm_helix.cli", *map(str, args)], capture_output=True, text=True)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def profiled(tiny_llama_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("profiles")
    cli("profile", "--model", tiny_llama_path, "--quick", "--enforce-eager", "-o", folder / "cpu.json")
    return folder


@pytest.fixture(scope="module")
def measured_plan(profiled, tiny_llama_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("measured-plan")
    done = cli("plan", "--cluster", ROOT / "examples/local3-cluster.yaml", "--model", tiny_llama_path,
               "--profiles", profiled, "--placement", ROOT / "examples/local3-placement.yaml", "-o", tmp / "plan.yaml")
    return tmp / "plan.yaml", done.stdout


@pytest.fixture(scope="module")
def server(measured_plan, tiny_llama_path, tmp_path_factory):
    plan, _ = measured_plan
    log = tmp_path_factory.mktemp("observe-serve") / "serve.log"
    server = VllmServer(tiny_llama_path, ["--executor", "helix", "--helix-plan", str(plan), "--enforce-eager",
                                          *COMMON], log_path=log, env={"HELIX_DRIFT_HOLD_S": str(HOLD_S)})
    with server as url:
        yield url.removesuffix("/v1"), server


@pytest.fixture(scope="module")
def single_server(profiled, tiny_llama_path, tmp_path_factory):
    """One node holding every layer, planned on the profile: alone with the coordinator on this host, as the
    profile's worker was (the 3-node chain's nodes share 2 cores with each other, which no profile of one
    worker sees)."""
    tmp = tmp_path_factory.mktemp("single")
    cluster = yaml.safe_load((ROOT / "examples/local3-cluster.yaml").read_text())
    cluster["nodes"] = cluster["nodes"][:1]
    (tmp / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    (tmp / "placement.yaml").write_text(yaml.safe_dump({"node-a": [0, 8]}))
    cli("plan", "--cluster", tmp / "cluster.yaml", "--model", tiny_llama_path, "--profiles", profiled,
        "--placement", tmp / "placement.yaml", "-o", tmp / "plan.yaml")
    server = VllmServer(tiny_llama_path, ["--executor", "helix", "--helix-plan", str(tmp / "plan.yaml"),
                                          "--enforce-eager", *COMMON], log_path=tmp / "serve.log",
                        env={"HELIX_DRIFT_HOLD_S": str(HOLD_S)})
    with server as url:
        yield url.removesuffix("/v1"), server


def test_profile_has_the_bundled_schema_and_round_trips_through_plan_and_simulate(profiled, measured_plan,
                                                                                  tiny_llama_path):
    doc = json.loads((profiled / "cpu.json").read_text())
    profile = load_profile_file(profiled / "cpu.json")  # the planner's own reader
    assert profile.measured and profile.gpu == "cpu" and profile.model == Path(tiny_llama_path).name
    assert profile.max_layers == 8 and all(profile.kv_blocks[k] > 0 for k in range(1, 9))
    assert profile.prompt_latency(256) > 0 and profile.decode_latency(8) > 0
    meta = doc["metadata"]
    assert meta["vllm_version"] and meta["dtype"] == "float32" and meta["device"] == "cpu" and meta["date"]
    assert meta["sweep"]["layers"] == [1, 7] and len(meta["raw_ms"]["prompt"]) == 4

    plan_path, table = measured_plan
    sources = [line.split()[-1] for line in table.splitlines() if line.startswith("node-")]
    assert sources == ["measured"] * 3, table  # every node's source in the plan's table
    plan = yaml.safe_load(plan_path.read_text())
    assert plan["throughput_model"] == "measured"
    assert [n["throughput_source"] for n in plan["nodes"]] == ["measured"] * 3
    assert plan["profiles"][0]["gpu"] == "cpu"
    # the plan embeds its profile: simulating it needs no --profiles
    report = json.loads(cli("simulate", "--plan", plan_path, "--cluster", ROOT / "examples/local3-cluster.yaml",
                            "--duration", "30", "--json").stdout)
    assert report["decode_throughput"] > 0


def _burst(url, model, n, max_tokens):
    body = {"model": str(model), "prompt": "Placement is a maximum flow problem: nodes, links and capacities. " * 3,
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    with cf.ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: post(url + "/v1", "/completions", {**body, "prompt": f"{i} {body['prompt']}"}),
                             range(n)))


def _node_values(metrics, name):
    return {labels["node"]: value for labels, value in metrics.get(name, [])}


def test_a_measured_plan_serves_and_its_metrics_move_during_a_burst(server, tiny_llama_path):
    url, _ = server
    scrapes, done = [], threading.Event()

    def watch():
        while not done.is_set():
            scrapes.append(scrape(url))
            time.sleep(0.3)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        answers = _burst(url, tiny_llama_path, 12, 48)
    finally:
        time.sleep(2.5)  # the idle reports
        done.set()
        watcher.join()
    assert all(a["choices"][0]["text"] and a["usage"]["completion_tokens"] == 48 for a in answers)
    nodes = {"node-a", "node-b", "node-c"}
    assert max(sum(_node_values(s, "helix_node_tokens_per_second").values()) for s in scrapes) > 0
    peak_kv = {n: max(_node_values(s, "helix_node_kv_blocks_used").get(n, 0) for s in scrapes) for n in nodes}
    assert all(v > 0 for v in peak_kv.values()), peak_kv  # KV use rose on every node ...
    final = scrapes[-1]
    assert set(_node_values(final, "helix_node_kv_blocks_used").values()) == {0.0}  # ... and fell
    assert all(v > 0 for v in _node_values(final, "helix_node_kv_blocks_total").values())
    assert _node_values(final, "helix_node_up") == dict.fromkeys(nodes, 1.0)
    assert _node_values(final, "helix_node_layer_start") == {"node-a": 0, "node-b": 2, "node-c": 5}
    # activations: node-a gets token ids only, node-c sends sampled tokens only
    assert all(v > 0 for n, v in _node_values(final, "helix_node_bytes_received_total").items() if n != "node-a")
    assert all(v > 0 for n, v in _node_values(final, "helix_node_bytes_sent_total").items() if n != "node-c")
    admitted = final["helix_requests_admitted_total"]
    assert [labels["route"] for labels, _ in admitted] == ["node-a>node-b>node-c"]
    assert sum(v for _, v in admitted) >= 12
    assert final["helix_planned_max_flow_tokens_per_second"][0][1] > 0

    table = cli("status", "--url", url).stdout
    assert "node-b" in table and "[2, 5)" in table and "bottleneck (busiest live node): node-" in table, table
    assert "route node-a -> node-b -> node-c" in table


def _drift_warnings(server):
    return [line for line in server.log_path.read_text(errors="replace").splitlines() if "the plan assumed" in line]


@contextlib.contextmanager
def cpu_cap(pid, share):
    """Cap a process (and its threads) at `share` of one CPU with a cgroup-v1 CFS quota."""
    try:
        CGROUP.mkdir()
    except OSError as exc:
        pytest.skip(f"no writable CPU cgroup to slow a node with: {exc}")
    try:
        (CGROUP / "cpu.cfs_period_us").write_text("100000")
        (CGROUP / "cpu.cfs_quota_us").write_text(str(int(100000 * share)))
        (CGROUP / "cgroup.procs").write_text(str(pid))  # the whole process, every thread
        yield
    finally:
        for task in (CGROUP / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (CGROUP.parent / "cgroup.procs").write_text(task)
        CGROUP.rmdir()


def _node_pid(server, node):
    for child in psutil.Process(server.process.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = child.cmdline()
            if "worker" in cmd and cmd[cmd.index("--node") + 1] == node:
                return child.pid
    raise AssertionError(f"no local worker process for {node}")


def _sustained_load(url, model, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _burst(url, model, 8, 32)


def test_drift_warning_fires_for_a_capped_node(single_server, tiny_llama_path):
    """The measured/planned ratio follows a CPU cap, and a capped node gets the warning with the fix.

    Not asserted here: no warning without the cap. On the shared 2-core test host a profile of one worker alone
    is 2-4x faster than the same worker next to `vllm serve`'s own processes, so an uncapped node reads 25-45 %
    (measured, not a tolerance question); tests/coordinator/test_metrics_and_drift.py checks that a node
    running as its profile says stays quiet."""
    url, srv = single_server
    _sustained_load(url, tiny_llama_path, WINDOW_S)
    before = _node_values(scrape(url), "helix_node_throughput_ratio")["node-a"]
    with cpu_cap(_node_pid(srv, "node-a"), 0.1):
        _sustained_load(url, tiny_llama_path, HOLD_S + 2 * WINDOW_S)
        metrics = scrape(url)
    after = _node_values(metrics, "helix_node_throughput_ratio")["node-a"]
    assert after < 0.5 * before, (before, after)  # a tenth of a core: far slower than before the cap
    warnings = _drift_warnings(srv)
    assert warnings and all("node node-a runs at" in w for w in warnings), "\n".join(warnings)
    assert "vllm-helix profile --model" in warnings[-1] and "vllm-helix plan" in warnings[-1]
    assert _node_values(metrics, "helix_node_drifting")["node-a"] == 1.0
