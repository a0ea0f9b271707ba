"""Hand-computed latency and throughput on one node, two in series and two in parallel."""

from __future__ import annotations

import pytest
from tiny_plans import BW, LAT

from vllm_helix.sim.run import SimConfig, simulate
from vllm_helix.sim.workload import Arrival

FP100 = 0.8e-3  # A100 prompt, 100 tokens, one layer (interpolated 0->0, 250->2 ms)
FD1 = 0.7e-3  # A100 decode, 1 sequence, one layer (interpolated 0->0, 2->1.4 ms)


def run(plan, arrivals, **kw):
    return simulate(plan, SimConfig(mode="online", trace=tuple(arrivals), **kw))


def coordinator_hop(tokens: int) -> float:
    return LAT + 2 * tokens / BW


def test_one_node_latency_and_throughput(one_node):
    report = run(one_node, [Arrival(0.0, 100, 3)])
    prompt = coordinator_hop(100) + 4 * FP100 + coordinator_hop(100)
    decode = coordinator_hop(1) + 4 * FD1 + coordinator_hop(1)
    assert report.prompt_latency["mean"] == pytest.approx(prompt, rel=1e-9)
    assert report.decode_latency["mean"] == pytest.approx(decode, rel=1e-9)
    t0 = report.window_s[0]
    assert report.last_finish_s == pytest.approx(t0 + prompt + 3 * decode, rel=1e-9)
    assert report.reference_total_throughput == pytest.approx(103 / (t0 + prompt + 3 * decode))
    assert report.queries["finished"] == 1


def test_two_nodes_in_series_pay_the_activation_hop(series):
    report = run(series, [Arrival(0.0, 100, 1)])
    activation_hop = LAT + 100 * (2 + 16384) / BW  # 1.6386 s: 100 tokens of activations at 1 MB/s
    prompt = coordinator_hop(100) + 2 * FP100 + activation_hop + 2 * FP100 + coordinator_hop(100)
    decode = coordinator_hop(1) + 2 * FD1 + (LAT + 16386 / BW) + 2 * FD1 + coordinator_hop(1)
    assert report.prompt_latency["mean"] == pytest.approx(prompt, rel=1e-9)
    assert report.decode_latency["mean"] == pytest.approx(decode, rel=1e-9)


def test_two_nodes_in_parallel_share_the_load(parallel):
    report = run(parallel, [Arrival(0.0, 100, 1), Arrival(0.0, 100, 1)])
    alone = coordinator_hop(100) + 4 * FP100 + coordinator_hop(100)
    # each prompt gets its own node and its own link: no queueing
    assert report.prompt_latency["mean"] == pytest.approx(alone, rel=1e-9)
    assert report.nodes["a"]["batches"] == report.nodes["b"]["batches"] == 2


def test_one_node_batches_concurrent_decodes(one_node):
    """Two queries at once on one node: the second prompt waits for the link, then for the first batch."""
    report = run(one_node, [Arrival(0.0, 100, 5), Arrival(0.0, 100, 5)])
    assert report.queries["finished"] == 2
    first = coordinator_hop(100) + 4 * FP100 + coordinator_hop(100)
    second = coordinator_hop(100) + 4 * FP100 + 4 * FP100 + coordinator_hop(100)  # node busy with the first
    assert report.prompt_latency["mean"] == pytest.approx((first + second) / 2, rel=1e-9)


def test_reference_quirks_double_single_decode(one_node):
    plain = run(one_node, [Arrival(0.0, 100, 1)])
    compat = run(one_node, [Arrival(0.0, 100, 1)], reference_compat=True)
    extra_decode = 4 * FD1  # decode x2 when exactly one decode is batched
    cpu = 16384 * (1 / 4e9 + 1 / 5e9)  # first-layer copy overhead per received token
    assert compat.decode_latency["mean"] == pytest.approx(plain.decode_latency["mean"] + extra_decode + cpu,
                                                          rel=1e-6)


def test_offline_keeps_the_cluster_busy(parallel):
    report = simulate(parallel, SimConfig(mode="offline", duration_s=30, warmup_s=5))
    assert report.decode_throughput > 0
    assert report.ratio_to_max_flow > 0
    assert all(0 <= n["utilization"] <= 1 for n in report.nodes.values())
