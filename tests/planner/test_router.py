"""Routers: IWRR proportions, flow floor, prompt limits, KV admission, baselines, node loss."""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from vllm_helix.planner.cluster import COORDINATOR as C
from vllm_helix.planner.iwrr import IWRR
from vllm_helix.planner.kv_expectation import KVParams
from vllm_helix.planner.router import MaxFlowRouter, RandomRouter, ShortestQueueRouter, SwarmRouter

sys.path.insert(0, str(Path(__file__).parents[1] / "sim"))
from tiny_plans import make_plan  # noqa: E402


@pytest.fixture
def parallel():
    return make_plan({"a": (0, 4), "b": (0, 4)}, [(C, "a"), ("a", C), (C, "b"), ("b", C)])


def check_route(route, plan):
    """Covers [0, L) contiguously, ends at the coordinator, uses only existing arcs."""
    layer, src = 0, C
    for hop in route.hops:
        assert plan.cluster.link(src, hop.node) is not None
        if hop.node != C:
            assert hop.layers.start == layer
            layer = hop.layers.end
        src = hop.node
    assert route.hops[-1].node == C and layer == plan.model.num_layers


def test_iwrr_follows_weights():
    w = IWRR([3.0, 1.0])
    picks = Counter(w.choose(1, [True, True]) for _ in range(400))
    assert picks[0] == 300 and picks[1] == 100
    assert w.choose(1, [False, False]) == -1


def test_iwrr_ties_go_to_the_lowest_index():
    assert IWRR([1.0, 1.0]).choose(5, [True, True]) == 0


def test_maxflow_splits_by_flow_and_routes_are_complete(parallel):
    router = MaxFlowRouter.from_plan(parallel, {"a": 10**9, "b": 10**9})
    nodes = Counter()
    for i in range(100):
        route = router.route(i, 100)
        check_route(route, parallel)
        nodes[route.nodes[0]] += 1
    assert nodes["a"] == nodes["b"] == 50


def test_prompt_longer_than_every_node_limit_is_refused(parallel):
    router = MaxFlowRouter.from_plan(parallel, {"a": 10**9, "b": 10**9})
    assert router.route("long", 3 * 2048 + 1) is None  # A100 takes 3 prompts x 2048 tokens at most


def test_kv_admission_and_release(parallel):
    # capacity for exactly one request of X = 100 + 240 tokens on 4 layers at hwm 1.0, per node
    router = MaxFlowRouter.from_plan(parallel, {"a": 340 * 4, "b": 340 * 4}, kv_params=KVParams(1.0, 1.0))
    assert router.route(1, 100) is not None
    assert router.route(2, 100) is not None
    assert router.route(3, 100) is None  # both nodes full: nothing reserved, loads restored
    assert router.bottleneck_usage() == pytest.approx(1.0)
    router.on_finish(1)
    assert router.route(3, 100) is not None


def test_improved_admission_uses_the_requests_own_length(parallel):
    router = MaxFlowRouter.from_plan(parallel, {"a": 1000, "b": 1000}, kv_params=KVParams(1.0, 1.0),
                                     improved=True)
    assert router.route(1, 100, expected_output=50) is not None  # 150 x 4 = 600 <= 1000 slots
    reference = MaxFlowRouter.from_plan(parallel, {"a": 1000, "b": 1000}, kv_params=KVParams(1.0, 1.0))
    assert reference.route(1, 100, expected_output=50) is None  # 340 x 4 > 1000


def test_flow_floor_masks_small_arcs(parallel):
    router = MaxFlowRouter.from_plan(parallel, {"a": 10**9, "b": 10**9})
    router.weights[(C, "b")] = 0.01 * router.weights[(C, "a")]  # b's arc now carries < 5 %
    assert all(router.route(i, 10).nodes == ["a"] for i in range(10))


def test_node_loss_reroutes_new_requests(parallel):
    router = MaxFlowRouter.from_plan(parallel, {"a": 10**9, "b": 10**9})
    first = router.route(0, 10)
    assert router.on_node_lost(first.nodes[0]) == [0]
    assert all(router.route(i, 10).nodes != first.nodes for i in range(1, 5))


def test_decode_steps_charge_the_route(parallel):
    router = MaxFlowRouter.from_plan(parallel, {"a": 10**9, "b": 10**9})
    router.route(0, 10)
    before = list(router.iwrr[C].loads)
    router.on_decode_step(0)
    assert sum(router.iwrr[C].loads) > sum(before)


@pytest.mark.parametrize("cls", [RandomRouter, ShortestQueueRouter, SwarmRouter])
def test_baselines_make_complete_routes(parallel, cls):
    router = cls.from_plan(parallel, rng=random.Random(1))
    for i in range(20):
        check_route(router.route(i, 100), parallel)
        router.on_finish(i)


def test_shortest_queue_uses_the_callers_observation(parallel):
    queues = {"a": 5, "b": 0}
    router = ShortestQueueRouter.from_plan(parallel, queue_length=queues.__getitem__)
    assert router.route(0, 10).nodes == ["b"]


def test_swarm_prefers_fast_hops(parallel):
    router = SwarmRouter.from_plan(parallel)
    router.on_hop_time(C, "a", 10.0)
    picks = Counter(router.route(i, 10).nodes[0] for i in range(20))
    assert picks["b"] > picks["a"]
