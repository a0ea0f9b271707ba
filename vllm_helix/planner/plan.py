"""Plan files: a placement with its cluster, model, evaluated flows and how it was found (YAML).

A plan is self-contained: it embeds the cluster (with node addresses, which workers need), the model
sizes and the measured profiles its nodes' throughput came from (registered again when it is read),
so `vllm-helix worker --plan P` and `vllm serve --helix-plan P` need nothing else. The flows in it
are the evaluator's (`flow.max_flow`), never a solver's internal numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.cluster import ClusterSpec, cluster_from_dict, cluster_to_dict
from vllm_helix.planner.flow import ROUTINGS, FlowResult, max_flow
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.planner.profiles import measured_documents, register_measured
from vllm_helix.planner.throughput import choose_source, node_sources

PLAN_VERSION = 1


@dataclass(frozen=True, slots=True)
class Plan:
    cluster: ClusterSpec
    model: ModelSpec
    placement: Placement
    flow: FlowResult
    method: str
    throughput_model: str = "reference"
    partial_inference: bool = False
    details: dict[str, Any] = field(default_factory=dict)  # solver log summary, seed, time limit, ...
    public_keys: dict[str, str] = field(default_factory=dict)  # CURVE, Z85, per node + coordinator (planner/keys.py)


def evaluate_plan(
    cluster: ClusterSpec, model: ModelSpec, placement: Placement, method: str, *,
    throughput: str = "reference", partial_inference: bool = False, details: dict[str, Any] | None = None,
    routing: str = "spread",
) -> Plan:
    """Fix the placement, compute its max flow with the evaluator (`routing`: flow.ROUTINGS), and wrap it as a Plan."""
    throughput = choose_source(throughput, cluster, model)
    flow = max_flow(cluster, model, placement, throughput=throughput, partial_inference=partial_inference,
                    routing=routing)
    return Plan(cluster, model, placement, flow, method, throughput, partial_inference, dict(details or {}))


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    flow = plan.flow
    sources = node_sources(plan.cluster, plan.model, plan.throughput_model)
    used_gpus = {plan.cluster.node(n).gpu_type for n in plan.placement.ranges}
    profiles = measured_documents(plan.model.name, used_gpus)
    return {
        "helix_plan": PLAN_VERSION,
        "method": plan.method,
        "throughput_model": plan.throughput_model,
        "partial_inference": plan.partial_inference,
        "max_flow_tokens_per_s": round(flow.value, 6),
        "upper_bound_tokens_per_s": round(flow.upper_bound, 6),
        "graph": flow.graph,
        "routing": flow.routing,
        "min_cut": list(flow.min_cut),
        "nodes": [
            {
                "name": name,
                "layers": [rng.start, rng.end],
                "flow_tokens_per_s": round(flow.node_flow.get(name, 0.0), 6),
                "capacity_tokens_per_s": round(flow.node_capacity.get(name, 0.0), 6),
                "throughput_source": sources[name],
            }
            for name, rng in plan.placement.ranges.items()
        ],
        "arcs": [
            {"from": a, "to": b, "flow_tokens_per_s": round(f, 6),
             "capacity_tokens_per_s": round(flow.arc_capacity[(a, b)], 6)}
            for (a, b), f in flow.arc_flow.items()
        ],
        "details": plan.details,
        **({"public_keys": dict(plan.public_keys)} if plan.public_keys else {}),
        "model": dataclasses.asdict(plan.model),
        "cluster": cluster_to_dict(plan.cluster),
        **({"profiles": profiles} if profiles else {}),
    }


def save_plan(plan: Plan, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(plan_to_dict(plan), sort_keys=False, width=120))


def plan_from_dict(data: Any, source: str) -> Plan:
    if not isinstance(data, dict) or data.get("helix_plan") != PLAN_VERSION:
        raise ClusterSpecError(f"{source}: not a vllm-helix plan (expected 'helix_plan: {PLAN_VERSION}')")
    cluster = cluster_from_dict(data["cluster"], source=f"{source}: cluster")
    model = ModelSpec(**data["model"])
    for i, document in enumerate(data.get("profiles") or []):
        register_measured(document, f"{source}: profiles[{i}]")
    ranges = {}
    for i, node in enumerate(data["nodes"]):
        start, end = node["layers"]
        if node["name"] not in cluster.node_names:
            raise ClusterSpecError(f"{source}: nodes[{i}].name: {node['name']!r} is not in the plan's cluster")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= model.num_layers):
            raise ClusterSpecError(f"{source}: nodes[{i}].layers: {node['layers']} not within [0, {model.num_layers})")
        ranges[node["name"]] = LayerRange(start, end)
    flow = FlowResult(
        value=float(data["max_flow_tokens_per_s"]),
        upper_bound=float(data["upper_bound_tokens_per_s"]),
        node_flow={n["name"]: float(n["flow_tokens_per_s"]) for n in data["nodes"]},
        node_capacity={n["name"]: float(n["capacity_tokens_per_s"]) for n in data["nodes"]},
        arc_flow={(a["from"], a["to"]): float(a["flow_tokens_per_s"]) for a in data["arcs"]},
        arc_capacity={(a["from"], a["to"]): float(a["capacity_tokens_per_s"]) for a in data["arcs"]},
        min_cut=tuple(data.get("min_cut", ())),
        graph=data.get("graph", "split"),
        routing=_routing(data.get("routing", "spread"), source),
    )
    return Plan(cluster, model, Placement(ranges), flow, data["method"], data.get("throughput_model", "reference"),
                bool(data.get("partial_inference", False)), data.get("details") or {},
                _public_keys(data.get("public_keys") or {}, source))


def _routing(name: Any, source: str) -> str:
    if name not in ROUTINGS:
        raise ClusterSpecError(f"{source}: routing: {name!r} is not one of {sorted(ROUTINGS)}")
    return name


def _public_keys(keys: Any, source: str) -> dict[str, str]:
    if not (isinstance(keys, dict) and all(isinstance(k, str) and len(k) == 40 for k in keys.values())):
        raise ClusterSpecError(f"{source}: public_keys: expected 'name: <40-character Z85 key>' entries")
    return {str(name): key for name, key in keys.items()}
