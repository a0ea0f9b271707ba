"""Tiny hand-computable clusters for the simulator and router tests (imported by conftest.py)."""

from __future__ import annotations

from vllm_helix.planner.cluster import ClusterSpec, LinkSpec, NodeSpec
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.planner.plan import evaluate_plan

# 4 layers of LLaMA-2-70B shape, so A100 profile tables apply (fp(100) = 0.8 ms, fd(1) = 0.7 ms per layer).
TINY = ModelSpec(name="tiny70b", num_layers=4, hidden_size=8192, layer_bytes=1.53e9,
                 activation_bytes_per_token=16384, token_bytes=2, profile_name="llama2_70b")
BW, LAT = 1e6, 1e-3  # 1 MB/s links with 1 ms latency: transfer times are easy to add up


def a100(name: str) -> NodeSpec:
    return NodeSpec(name, "A100", 40e9)


def make_plan(ranges: dict[str, tuple[int, int]], arcs: list[tuple[str, str]]):
    nodes = tuple(a100(n) for n in ranges)
    links = tuple(LinkSpec(s, d, BW, LAT) for s, d in arcs)
    cluster = ClusterSpec(nodes, links, name="tiny")
    placement = Placement({n: LayerRange(*r) for n, r in ranges.items()})
    return evaluate_plan(cluster, TINY, placement, "hand")


