"""Batches in flight as a vllm-helix server keeps them (sim/batching.py), hand-computed on the tiny plans."""

from __future__ import annotations

import pytest
from tiny_plans import BW, LAT

from vllm_helix.errors import ClusterSpecError
from vllm_helix.sim.batching import EngineLimits
from vllm_helix.sim.run import SimConfig, simulate
from vllm_helix.sim.workload import Arrival

FP100 = 0.8e-3  # A100 prompt, 100 tokens, one layer (linear from 0)
FD1 = 0.7e-3  # A100 decode, 1 sequence, one layer


def run(plan, arrivals, **limits):
    return simulate(plan, SimConfig(mode="online", trace=tuple(arrivals), engine=EngineLimits(**limits)))


def coordinator_hop(tokens: int) -> float:
    return LAT + 2 * tokens / BW


def test_the_prompt_pass_samples_the_first_token(one_node):
    report = run(one_node, [Arrival(0.0, 100, 3)], depth=1)
    prompt = coordinator_hop(100) + 4 * FP100 + coordinator_hop(100)
    decode = coordinator_hop(1) + 4 * FD1 + coordinator_hop(1)
    assert report.prompt_latency["mean"] == pytest.approx(prompt, rel=1e-9)
    assert report.last_finish_s == pytest.approx(report.window_s[0] + prompt + 2 * decode, rel=1e-9)
    assert report.nodes["a"]["batches"] == 3  # prompt + 2 decodes for 3 output tokens


def test_a_long_prompt_goes_in_chunks_of_the_token_budget(one_node):
    """40 + 40 + 20 tokens, all three steps in flight at once (a chunk is computed once scheduled, in vLLM)."""
    report = run(one_node, [Arrival(0.0, 100, 1)], depth=3, max_num_batched_tokens=40)
    assert report.nodes["a"]["batches"] == 3
    # the node runs the chunks back to back; prompt time is linear, so the three add up to one 100-token pass
    assert report.prompt_latency["mean"] == pytest.approx(coordinator_hop(40) + 4 * FP100 + coordinator_hop(20),
                                                          rel=1e-9)


def test_depth_splits_the_requests_into_steps_that_stay_together(series):
    """Two nodes -> two steps in flight: 4 requests go as 2 steps of 2 (the budget holds 2 prompts), and each
    pair's decodes follow as one step when its previous step is back: 2 x (prompt + 2 decodes) steps."""
    arrivals = [Arrival(0.0, 100, 3)] * 4
    report = run(series, arrivals, depth=0, max_num_batched_tokens=200)
    assert report.queries["finished"] == 4
    assert report.nodes["a"]["batches"] == report.nodes["b"]["batches"] == 6
    at_nodes = simulate(series, SimConfig(mode="online", trace=tuple(arrivals)))
    assert at_nodes.nodes["a"]["batches"] != 6  # the reference's model batches whatever is queued at a node


def test_max_num_seqs_holds_new_requests_back(one_node):
    arrivals = [Arrival(0.0, 100, 2)] * 3
    assert run(one_node, arrivals, depth=1).nodes["a"]["batches"] == 2  # 3 prompts, then 3 decodes
    # two run (prompt, decode), then the third (prompt, decode)
    assert run(one_node, arrivals, depth=1, max_num_seqs=2).nodes["a"]["batches"] == 4


def test_each_step_carries_one_route(parallel):
    report = run(parallel, [Arrival(0.0, 100, 4)] * 6, depth=0)
    assert report.queries["finished"] == 6
    assert report.nodes["a"]["batches"] > 0 and report.nodes["b"]["batches"] > 0


def test_bad_limits_are_refused():
    with pytest.raises(ClusterSpecError, match="depth must be >= 0"):
        EngineLimits(depth=-1)
    with pytest.raises(ClusterSpecError, match="max_num_seqs must be >= 1"):
        EngineLimits(max_num_seqs=0)
