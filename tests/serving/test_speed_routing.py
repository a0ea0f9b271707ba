"""Routing follows the nodes' measured speed, end to end: two replicas of the tiny model that the plan (from a measured
profile of this CPU) says are equally fast (its weights split 1:1), one of them then capped at 1/16 of a core (a
cgroup CFS quota: a slower machine than its plan says). Under load the coordinator measures both against the plan
and re-weighs: most new requests go to the fast replica, and none to the capped one while the fast one has room.
Uncapped, it gets no request, so no new measurement: its speed is forgotten after HELIX_DRIFT_HOLD_S (20 s here, a
minute by default), it gets its planned share again, is measured near its plan and keeps its share.
With --helix-follow-probes, the nodes' start-up probes set the speeds before the first request: an estimated plan that
calls one of two identical replicas four times faster splits the first requests about evenly, not 4:1.
(Without engines: tests/coordinator/test_failover_parts.py, tests/coordinator/test_metrics_and_drift.py.)
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import time

import pytest
from cpu_cap import CpuCap
from serve_helpers import COMMON, local_worker, post, write_plan

from vllm_helix.vllm_server import VllmServer

pytestmark = [pytest.mark.engine, pytest.mark.slow]
CLUSTER = {"name": "replicas", "coordinator": {"address": "local"},
           "nodes": [{"name": n, "gpu": "cpu", "gpus": 1, "tp": 1, "vram": "4GB", "address": "local"}
                     for n in ("steady", "capped")],
           "default_link": {"bandwidth": "10Gbps", "latency": "0.1ms"}}
PLACEMENT = {"steady": [0, 8], "capped": [0, 8]}
ROUTE = re.compile(r"^route \S+: coordinator -> (\w+) \[0, 8\) -> coordinator$")
# an estimate that calls `big` four times as fast as `small`: on this host both are the same one process
MISJUDGED = {**CLUSTER, "nodes": [{"name": n, "gpu": "cpu", "gpus": g, "tp": 1, "vram": "4GB", "address": "local"}
                                  for n, g in (("big", 4), ("small", 1))]}
SPEED = re.compile(r"relative speed: (.*)$", re.MULTILINE)


@pytest.fixture(scope="module")
def replicas(tiny_llama_path, profiled, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("speed-routing")
    plan = write_plan(tmp, tiny_llama_path, CLUSTER, PLACEMENT, profiles=profiled)  # speeds need a profile
    server = VllmServer(tiny_llama_path, ["--executor", "helix", "--helix-plan", str(plan), "--enforce-eager",
                                          "--helix-route-log", str(tmp / "routes.log"), *COMMON],
                        log_path=tmp / "serve.log", env={"OMP_NUM_THREADS": "1", "HELIX_DRIFT_HOLD_S": "20"})
    with server as url:
        yield url, tmp / "routes.log", server


@pytest.fixture(scope="module")
def misjudged(tiny_llama_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe-routing")
    plan = write_plan(tmp, tiny_llama_path, MISJUDGED, {"big": [0, 8], "small": [0, 8]})  # estimated
    server = VllmServer(tiny_llama_path, ["--executor", "helix", "--helix-plan", str(plan), "--enforce-eager",
                                          "--helix-follow-probes", "--helix-route-log", str(tmp / "routes.log"),
                                          *COMMON], log_path=tmp / "serve.log", env={"OMP_NUM_THREADS": "1"})
    with server as url:
        yield url, tmp / "routes.log", server


def _wave(url, model, n=8, max_tokens=24):
    body = {"model": str(model), "prompt": "Placement is a maximum flow problem: nodes, links and capacities. " * 2,
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    with cf.ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda _: post(url, "/completions", body), range(n)))


def _speeds(server) -> dict[str, float]:
    """The relative speeds of the latest re-weighing in the log (a node not named: its speed was forgotten)."""
    found = SPEED.findall(server.log_path.read_text())
    return {n: float(v) for n, v in re.findall(r"(\w+) ([0-9.]+)", found[-1])} if found else {}


def _load_until(url, model, server, fits, timeout_s=120.0) -> dict[str, float]:
    """Keep both replicas busy until the latest re-weighing's speeds fit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _wave(url, model)
        if fits(_speeds(server)):
            return _speeds(server)
    raise AssertionError(f"no re-weighing as expected within {timeout_s:.0f} s: {server.log_tail(30)}")


def _share_of(node, url, model, routes_log) -> float:
    before = len(routes_log.read_text().splitlines()) if routes_log.exists() else 0
    for _ in range(3):
        _wave(url, model, n=8, max_tokens=4)
    chosen = [ROUTE.match(line).group(1) for line in routes_log.read_text().splitlines()[before:]]
    assert len(chosen) == 24, chosen
    return chosen.count(node) / len(chosen)


@pytest.mark.skipif(not CpuCap.available(), reason="a CPU cap needs root and a cgroup cpu controller")
def test_a_node_slower_than_its_plan_gets_fewer_requests_and_its_share_back_once_it_recovers(replicas,
                                                                                          tiny_llama_path):
    url, routes_log, server = replicas
    with CpuCap("capped-replica", 1 / 16) as cap:
        cap.add(local_worker(server, "capped").pid)
        speeds = _load_until(url, tiny_llama_path, server, lambda v: v.get("capped", 1.0) < 0.5 * v.get("steady", 1.0))
        share = _share_of("steady", url, tiny_llama_path, routes_log)
    # the plan's weights are 1:1; the measured ones give the capped replica a small fraction
    assert share >= 0.75, f"relative speeds {speeds}: {share:.0%} of routes via steady"
    # uncapped: forgotten after the hold (no work, no measurement), then measured near its plan again
    _load_until(url, tiny_llama_path, server, lambda v: v.get("capped", 1.0) > 0.6 * v.get("steady", 1.0))
    deadline = time.monotonic() + 15  # beyond the 10 s window: measured, and re-weighed if it were slow
    while time.monotonic() < deadline:
        _wave(url, tiny_llama_path)
    speeds = _speeds(server)
    assert speeds.get("capped", 1.0) > 0.6 * speeds.get("steady", 1.0), speeds
    assert 0.3 <= _share_of("steady", url, tiny_llama_path, routes_log) <= 0.7


def test_the_first_requests_follow_the_start_up_probes_not_a_misjudged_estimate(misjudged, tiny_llama_path):
    url, routes_log, server = misjudged
    log = server.log_path.read_text()
    assert log.rindex(": ready ") < log.index(": calibrating "), log  # every node probes once all are ready
    # before any request: the re-weighing at start-up, from the probes in the nodes' Hellos
    speeds = _speeds(server)
    assert speeds and speeds["big"] < 0.5 * speeds["small"], speeds  # measured alike, planned 4:1
    share = _share_of("big", url, tiny_llama_path, routes_log)
    assert 0.3 <= share <= 0.7, f"relative speeds {speeds}: {share:.0%} of routes via big (the plan's weights: 80%)"
    # while serving, without a profile, each node's batches are priced by its own probe: still measured alike
    deadline = time.monotonic() + 15  # beyond the 10 s window
    while time.monotonic() < deadline:
        _wave(url, tiny_llama_path)
    speeds = _speeds(server)
    assert speeds["big"] < 0.6 * speeds["small"], speeds
