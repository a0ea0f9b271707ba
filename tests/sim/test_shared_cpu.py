"""Nodes sharing a host's cores, and a node under a CPU quota (sim/cpu.py; the cluster's host_cores, cpu_quota)."""

from __future__ import annotations

import dataclasses

import pytest

from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.cluster import cluster_from_dict, cluster_to_dict
from vllm_helix.sim.cpu import SharedCpu
from vllm_helix.sim.loop import EventLoop
from vllm_helix.sim.run import SimConfig, simulate
from vllm_helix.sim.workload import Arrival


def finish_times(cores: float, jobs: list[tuple[float, str, float, float | None]]) -> dict[str, float]:
    """Run (start, owner, solo seconds, quota) jobs on one host; when each finished."""
    loop, done = EventLoop(), {}
    cpu = SharedCpu(loop, cores)
    for start, owner, work, quota in jobs:
        loop.at(start, lambda _, o=owner, w=work, q=quota: cpu.run(
            o, w, lambda wall, o=o: done.__setitem__(o, loop.now), q))
    loop.run()
    return done


def test_batches_share_the_cores_while_they_overlap():
    assert finish_times(1, [(0, "a", 1.0, None), (0, "b", 1.0, None)]) == pytest.approx({"a": 2.0, "b": 2.0})
    assert finish_times(2, [(0, "a", 1.0, None), (0, "b", 1.0, None)]) == pytest.approx({"a": 1.0, "b": 1.0})
    # b starts half-way: a's last 0.5 s runs at half speed (done at 1.5), then b alone (its last 0.5 s)
    assert finish_times(1, [(0, "a", 1.0, None), (0.5, "b", 1.0, None)]) == pytest.approx({"a": 1.5, "b": 2.0})
    # three nodes on two cores each get 2/3 of a core
    three = finish_times(2, [(0, n, 1.0, None) for n in "abc"])
    assert three == pytest.approx({n: 1.5 for n in "abc"})


def test_a_quota_throttles_a_busy_node_not_an_idle_one():
    """Half a core: 50 ms of CPU per 100 ms period, then nothing until the next period."""
    assert finish_times(8, [(0, "a", 0.03, 0.5)]) == pytest.approx({"a": 0.03})  # under the quota: full speed
    assert finish_times(8, [(0, "a", 0.08, 0.5)]) == pytest.approx({"a": 0.13})  # 50 ms, wait, 30 ms
    assert finish_times(8, [(0, "a", 1.0, 0.5)]) == pytest.approx({"a": 1.95})  # busy: half speed on average
    # the quota is the node's, across its batches: the second starts with 10 ms of the period left
    assert finish_times(8, [(0, "a", 0.04, 0.5), (0.04, "a2", 0.04, 0.5)])["a2"] == pytest.approx(0.08)


def test_a_node_quota_spans_its_batches():
    loop, done = EventLoop(), []
    cpu = SharedCpu(loop)
    node = object()

    def batch(_=None):
        cpu.run(node, 0.04, lambda wall: (done.append(loop.now), len(done) < 2 and batch()), 0.5)

    loop.at(0.0, batch)
    loop.run()
    assert done == pytest.approx([0.04, 0.13])  # 40 ms, then 10 ms left in the period, wait, 30 ms


def on_host(plan, cores: float | None):
    host_cores = (("local", cores),) if cores else ()
    return dataclasses.replace(plan, cluster=dataclasses.replace(plan.cluster, host_cores=host_cores))


def test_nodes_on_a_shared_host_run_slower_only_when_they_overlap(series, parallel):
    one = (Arrival(0.0, 100, 3),)
    alone = simulate(series, SimConfig(mode="online", trace=one))
    shared = simulate(on_host(series, 1), SimConfig(mode="online", trace=one))
    assert shared.last_finish_s == pytest.approx(alone.last_finish_s, rel=1e-9)  # a and b never run together
    many = tuple(Arrival(0.0, 100, 20) for _ in range(8))  # replicas a and b both busy
    solo = took(simulate(parallel, SimConfig(mode="online", trace=many)))
    assert took(simulate(on_host(parallel, 2), SimConfig(mode="online", trace=many))) == \
        pytest.approx(solo, rel=1e-9)  # a core each
    assert took(simulate(on_host(parallel, 1), SimConfig(mode="online", trace=many))) > solo * 1.1


def took(report) -> float:
    return report.last_finish_s - report.window_s[0]


def test_cluster_file_carries_host_cores_and_quotas():
    data = {"nodes": [{"name": "a", "gpu": "cpu", "vram": "4GB"},
                      {"name": "b", "gpu": "cpu", "vram": "4GB", "address": "10.0.0.7:6100", "cpu_quota": 0.5}],
            "host_cores": {"local": 2}}
    cluster = cluster_from_dict(data)
    assert cluster.host_cores == (("local", 2.0),)
    assert [n.host for n in cluster.nodes] == ["local", "10.0.0.7"]
    assert cluster.node("b").cpu_quota == 0.5
    assert cluster_from_dict(cluster_to_dict(cluster)) == cluster
    with pytest.raises(ClusterSpecError, match=r"host_cores: local: cores must be a (finite )?number > 0"):
        cluster_from_dict({**data, "host_cores": {"local": 0}})
    with pytest.raises(ClusterSpecError, match=r"cpu_quota: must be > 0"):
        cluster_from_dict({"nodes": [{"name": "a", "gpu": "cpu", "vram": "4GB", "cpu_quota": -1}]})
