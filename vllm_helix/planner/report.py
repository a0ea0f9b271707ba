"""Human-readable and JSON views of a flow evaluation / plan, for the CLI."""

from __future__ import annotations

from typing import Any

from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.planner.flow import FlowResult
from vllm_helix.planner.placement import Placement


def flow_to_dict(cluster: ClusterSpec, placement: Placement, flow: FlowResult,
                 sources: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "max_flow_tokens_per_s": flow.value,
        "upper_bound_tokens_per_s": flow.upper_bound,
        "graph": flow.graph,
        "min_cut": list(flow.min_cut),
        "nodes": [
            {
                "name": name,
                "gpu": cluster.node(name).gpu_type,
                "tensor_parallel_size": cluster.node(name).tensor_parallel_size,
                "layers": [rng.start, rng.end] if (rng := placement[name]) else None,
                "flow_tokens_per_s": flow.node_flow.get(name, 0.0),
                "capacity_tokens_per_s": flow.node_capacity.get(name, 0.0),
                **({"throughput_source": sources[name]} if sources else {}),
            }
            for name in cluster.node_names
        ],
        "arcs": [
            {"from": a, "to": b, "flow_tokens_per_s": f, "capacity_tokens_per_s": flow.arc_capacity[(a, b)]}
            for (a, b), f in flow.arc_flow.items()
            if f > 0
        ],
    }


def flow_table(cluster: ClusterSpec, placement: Placement, flow: FlowResult,
               sources: dict[str, str] | None = None) -> str:
    """`sources`: where each node's throughput came from (measured / bundled / estimate), as a column."""
    sources = sources or {}
    lines = [
        f"max compute throughput (upper bound U): {flow.upper_bound:10.3f} tokens/s",
        f"max flow:                               {flow.value:10.3f} tokens/s  ({flow.graph} graph)",
        "",
        f"{'node':<14}{'gpu':<7}{'tp':>3}{'layers':>12}{'flow':>12}{'capacity':>12}{'use':>7}"
        + ("  source" if sources else ""),
    ]
    order = sorted(cluster.node_names, key=lambda n: (placement[n] is None, placement[n] or (0, 0), n))
    for name in order:
        rng, cap = placement[name], flow.node_capacity.get(name, 0.0)
        used = flow.node_flow.get(name, 0.0)
        layers = str(rng) if rng else "unused"
        share = f"{100 * used / cap:5.1f}%" if cap else "     -"
        node = cluster.node(name)  # tp: the degree of vLLM tensor parallelism its worker runs with
        lines.append(f"{name:<14}{node.gpu_type:<7}{node.tensor_parallel_size:>3}{layers:>12}{used:12.3f}{cap:12.3f}"
                     f"{share:>7}" + (f"  {sources[name]}" if sources else ""))
    lines += ["", "min cut (the bottleneck): " + (", ".join(flow.min_cut) or "-")]
    return "\n".join(lines)
