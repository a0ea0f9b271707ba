"""Max-flow evaluation: the reference numbers, hand-computable clusters, and invariants."""

import pytest
from checks import PUBLISHED, check_flow

from vllm_helix.errors import InfeasiblePlacement
from vllm_helix.planner.cluster import COORDINATOR, cluster_from_dict
from vllm_helix.planner.examples import REFERENCE_METHODS, reference_example
from vllm_helix.planner.flow import compatible_arcs, max_flow
from vllm_helix.planner.live_flow import live_max_flow
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.planner.throughput import NodeCapacity


@pytest.mark.parametrize("method", REFERENCE_METHODS)
@pytest.mark.parametrize("graph", ["split", "planner"])
def test_reference_layouts_reproduce_published_max_flow(method, graph):
    ex = reference_example(method)
    flow = max_flow(ex.cluster, ex.model, ex.placement, partial_inference=ex.partial_inference, graph=graph)
    assert flow.value == pytest.approx(PUBLISHED[method], rel=1e-4)
    assert flow.upper_bound == pytest.approx(2803.861, rel=1e-4)
    check_flow(flow, ex.placement, ex.model.num_layers, ex.partial_inference)


def test_raw_float_mode_matches_scaled_integers():
    ex = reference_example("ilp")
    raw = max_flow(ex.cluster, ex.model, ex.placement, scale=None)
    assert raw.value == pytest.approx(1289.5557702751464, rel=1e-9)


# --- tiny hand-computable clusters: capacities given directly, links 1 MB/s = 1000 tokens/s of 1 KB

TINY = ModelSpec("tiny", num_layers=4, hidden_size=500, layer_bytes=1.0, activation_bytes_per_token=1000,
                 token_bytes=1)


def tiny_cluster(names, link_bw="1MB/s"):
    return cluster_from_dict({
        "nodes": [{"name": n, "gpu": "X", "vram": "1GB", "nic_in": "1GB/s", "nic_out": "1GB/s"} for n in names],
        "default_link": {"bandwidth": link_bw, "latency": "1ms"},
    })


def caps(**per_node):
    return {n: NodeCapacity(tuple(t), (1000,) * len(t)) for n, t in per_node.items()}


def test_one_node_holding_everything():
    flow = max_flow(tiny_cluster(["a"]), TINY, Placement({"a": LayerRange(0, 4)}),
                    capacities=caps(a=[400, 300, 200, 100]), graph="planner")
    assert flow.value == pytest.approx(100)
    assert flow.min_cut == ("compute of a",)
    assert flow.upper_bound == pytest.approx(max(400, 2 * 300, 3 * 200, 4 * 100) / 4)


def test_two_nodes_in_series_take_the_slower():
    placement = Placement({"a": LayerRange(0, 1), "b": LayerRange(1, 4)})
    flow = max_flow(tiny_cluster(["a", "b"]), TINY, placement, capacities=caps(a=[500, 1, 1, 1], b=[1, 1, 120, 1]))
    assert flow.value == pytest.approx(120)
    assert flow.arc_flow[("a", "b")] == pytest.approx(120)
    assert flow.min_cut == ("compute of b",)


def test_two_nodes_in_parallel_add_up():
    placement = Placement({"a": LayerRange(0, 4), "b": LayerRange(0, 4)})
    flow = max_flow(tiny_cluster(["a", "b"]), TINY, placement,
                    capacities=caps(a=[1, 1, 1, 70], b=[1, 1, 1, 30]))
    assert flow.value == pytest.approx(100)
    assert flow.node_flow == pytest.approx({"a": 70, "b": 30})


def test_slow_link_is_the_bottleneck_and_named():
    placement = Placement({"a": LayerRange(0, 2), "b": LayerRange(2, 4)})
    flow = max_flow(tiny_cluster(["a", "b"], link_bw="50kB/s"), TINY, placement,
                    capacities=caps(a=[1, 900, 1, 1], b=[1, 900, 1, 1]), graph="planner")
    # 50 kB/s over 1000-byte activations = 50 tokens/s (coordinator hops carry 1-byte tokens: not binding)
    assert flow.value == pytest.approx(50)
    assert flow.min_cut == ("link a -> b",)


def test_exact_chaining_vs_partial_inference():
    placement = Placement({"a": LayerRange(0, 3), "b": LayerRange(2, 4)})  # overlapping windows
    capacities = caps(a=[9, 9, 100, 9], b=[9, 100, 9, 9])
    assert max_flow(tiny_cluster(["a", "b"]), TINY, placement, capacities=capacities).value == 0
    assert compatible_arcs(tiny_cluster(["a", "b"]), placement, 4) == [("coordinator", "a"), ("b", "coordinator")]
    partial = max_flow(tiny_cluster(["a", "b"]), TINY, placement, capacities=capacities, partial_inference=True)
    assert partial.value == pytest.approx(100)


def test_unused_nodes_and_bad_placements():
    placement = Placement({"a": LayerRange(0, 4)})
    flow = max_flow(tiny_cluster(["a", "b"]), TINY, placement, capacities=caps(a=[1, 1, 1, 10], b=[5, 5, 5, 5]))
    assert flow.value == pytest.approx(10) and "b" not in flow.node_flow
    with pytest.raises(InfeasiblePlacement, match="node 'a': layers \\[2, 9\\) outside"):
        max_flow(tiny_cluster(["a"]), TINY, Placement({"a": LayerRange(2, 9)}), capacities=caps(a=[1] * 4))
    with pytest.raises(InfeasiblePlacement, match="holds 4 layers but fits at most 2"):
        max_flow(tiny_cluster(["a"]), TINY, placement, capacities=caps(a=[1, 1]))
    with pytest.raises(InfeasiblePlacement, match="unknown node 'zz'"):
        max_flow(tiny_cluster(["a"]), TINY, Placement({"zz": LayerRange(0, 4)}), capacities=caps(a=[1] * 4))


# --- among equal max flows, the flow written takes the short, fast routes (router weights), deterministically


def capped_cluster(names, slow=()):
    """Coordinator NIC caps the flow at 100 tokens/s; links to nodes in `slow` have 50 ms latency."""
    return cluster_from_dict({
        "coordinator": {"nic_out": "100B/s", "nic_in": "1GB/s"},
        "nodes": [{"name": n, "gpu": "X", "vram": "1GB", "nic_in": "1GB/s", "nic_out": "1GB/s"} for n in names],
        "links": [{"between": ["coordinator", n], "bandwidth": "1MB/s", "latency": "50ms"} for n in slow],
        "default_link": {"bandwidth": "1MB/s", "latency": "1ms"},
    })


@pytest.mark.parametrize("order", [("a", "b", "c"), ("c", "b", "a")])
def test_equal_max_flows_take_the_shorter_pipeline(order):
    placement = Placement({n: {"a": LayerRange(0, 4), "b": LayerRange(0, 2), "c": LayerRange(2, 4)}[n]
                           for n in order})
    flow = max_flow(capped_cluster(order), TINY, placement, capacities=caps(**{n: [500] * 4 for n in order}))
    assert flow.value == pytest.approx(100)  # either route alone could carry it all
    assert flow.node_flow == {"a": pytest.approx(100), "b": 0, "c": 0}


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_equal_max_flows_take_the_low_latency_replica(order):
    cluster = capped_cluster(order, slow=("a",))
    placement = Placement({n: LayerRange(0, 4) for n in order})
    flow = max_flow(cluster, TINY, placement, capacities=caps(a=[500] * 4, b=[500] * 4))
    assert flow.value == pytest.approx(100)
    assert flow.node_flow == {"a": 0, "b": pytest.approx(100)}


def test_spread_routing_keeps_replicas_below_the_busy_share_and_direct_fills_the_fastest():
    cluster = cluster_from_dict({  # the coordinator caps the flow at 100 tokens/s; a is 4 ms further away
        "coordinator": {"nic_out": "100B/s", "nic_in": "1GB/s"},
        "nodes": [{"name": n, "gpu": "X", "vram": "1GB", "nic_in": "1GB/s", "nic_out": "1GB/s"} for n in "ab"],
        "links": [{"between": ["coordinator", "a"], "bandwidth": "1MB/s", "latency": "5ms"}],
        "default_link": {"bandwidth": "1MB/s", "latency": "1ms"},
    })
    placement = Placement({n: LayerRange(0, 4) for n in ("a", "b")})
    capacities = caps(a=[100] * 4, b=[100] * 4)  # either replica alone could carry it all
    spread = max_flow(cluster, TINY, placement, capacities=capacities)
    direct = max_flow(cluster, TINY, placement, capacities=capacities, routing="direct")
    assert spread.value == direct.value == pytest.approx(100)
    assert (spread.routing, direct.routing) == ("spread", "direct")
    assert spread.node_flow == {"a": pytest.approx(20), "b": pytest.approx(80)}  # b (fast) up to 80 % busy
    assert direct.node_flow == {"a": 0, "b": pytest.approx(100)}  # b (fast) carries everything
    with pytest.raises(ValueError, match="routing must be one of"):
        max_flow(cluster, TINY, placement, capacities=capacities, routing="fastest")


def test_live_flow_after_a_loss_keeps_the_plans_routing():
    placement = Placement({"a": LayerRange(0, 2), "b": LayerRange(0, 2), "c": LayerRange(2, 4), "d": LayerRange(2, 4)})
    capacities = caps(a=[100] * 4, b=[100] * 4, c=[1, 100, 1, 1], d=[1, 100, 1, 1])
    cluster = tiny_cluster("abcd")
    for routing, busiest in (("spread", 80), ("direct", 100)):
        flow = max_flow(cluster, TINY, placement, capacities=capacities, routing=routing)
        value, arcs = live_max_flow(flow, lost={"d"})  # c alone (100 tokens/s) is the bottleneck now
        assert value == pytest.approx(100)
        assert max(arcs[(COORDINATOR, "a")], arcs[(COORDINATOR, "b")]) == pytest.approx(busiest)
