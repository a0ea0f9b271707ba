"""Spec §8.3 S1: the reference's offline MaxFlow example, reproduced within 2 %."""

from __future__ import annotations

import pytest

from vllm_helix.sim.run import SimConfig, reference_s1_setup, simulate

PUBLISHED = {"decode": 248.3, "prompt": 3.094, "decode_latency": 1.457, "total": 1176.70, "last": 679.60}


@pytest.fixture(scope="module")
def s1():
    plan, kv = reference_s1_setup()
    return plan, simulate(plan, SimConfig.reference_s1(), kv)


def test_s1_max_flow_is_the_published_one(s1):
    plan, _ = s1
    assert plan.flow.value == pytest.approx(1289.5557702751464, rel=1e-12)


def test_s1_reproduces_published_numbers_within_2_percent(s1):
    _, report = s1
    assert report.window_s == (80, 680)
    assert report.decode_throughput == pytest.approx(PUBLISHED["decode"], rel=0.02)
    assert report.prompt_latency["mean"] == pytest.approx(PUBLISHED["prompt"], rel=0.02)
    assert report.decode_latency["mean"] == pytest.approx(PUBLISHED["decode_latency"], rel=0.02)
    assert report.reference_total_throughput == pytest.approx(PUBLISHED["total"], rel=0.02)
    assert report.last_finish_s == pytest.approx(PUBLISHED["last"], rel=0.01)


def test_s1_is_cheap(s1):
    _, report = s1
    assert report.cost["cpu_s"] < 20
    assert sum(n["kv_overflows"] for n in report.nodes.values()) == 0


def test_s1_report_serializes(s1):
    import json

    _, report = s1
    data = json.loads(json.dumps(report.to_dict()))
    assert data["decode_throughput"] == report.decode_throughput
    assert "decode throughput" in report.summary()
