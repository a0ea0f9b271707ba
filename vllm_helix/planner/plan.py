"""Plan files: a placement with its cluster, model, evaluated flows and how it was found (YAML).

A plan is self-contained: it embeds the cluster (with node addresses, which workers need), the model
sizes and the measured profiles its nodes' throughput came from (registered again when it is read),
so `vllm-helix worker --plan P` and `vllm serve --helix-plan P` need nothing else. The flows in it
are the evaluator's (`flow.max_flow`), never a solver's internal numbers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vllm_helix.errors import ClusterSpecError
from vllm_helix.output_files import write_text
from vllm_helix.planner.cluster import COORDINATOR, ClusterSpec, cluster_from_dict, cluster_to_dict
from vllm_helix.planner.flow import GRAPHS, ROUTINGS, FlowResult, max_flow
from vllm_helix.planner.model import ModelSpec, model_from_dict
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.planner.profiles import measured_documents, register_measured
from vllm_helix.planner.throughput import THROUGHPUT_SOURCES, choose_source, node_sources

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
    write_text(path, yaml.safe_dump(plan_to_dict(plan), sort_keys=False, width=120), "plan")


def plan_from_dict(data: Any, source: str) -> Plan:
    """A Plan from a parsed plan file; anything malformed is a ClusterSpecError naming its field."""
    if not isinstance(data, dict) or data.get("helix_plan") != PLAN_VERSION:
        raise ClusterSpecError(f"{source}: not a vllm-helix plan (expected 'helix_plan: {PLAN_VERSION}')")
    fields = _Fields(data, source)
    cluster = cluster_from_dict(fields.need("cluster"), source=f"{source}: cluster")
    model = model_from_dict(fields.need("model"), f"{source}: model")
    for i, document in enumerate(fields.items("profiles", optional=True)):
        register_measured(document, f"{source}: profiles[{i}]")
    ranges, node_flow, node_capacity = {}, {}, {}
    for i, node in enumerate(fields.items("nodes")):
        where = _Fields(node, source, f"nodes[{i}]")
        name, layers = where.text("name"), where.need("layers")
        if name not in cluster.node_names:
            raise ClusterSpecError(f"{source}: nodes[{i}].name: {name!r} is not in the plan's cluster")
        if name in ranges:
            raise ClusterSpecError(f"{source}: nodes[{i}].name: {name!r} is listed twice")
        if not (isinstance(layers, list) and len(layers) == 2 and all(_is_int(x) for x in layers)
                and 0 <= layers[0] < layers[1] <= model.num_layers):
            raise ClusterSpecError(f"{source}: nodes[{i}].layers: {layers!r} is not [start, end) within "
                                   f"[0, {model.num_layers}]")
        ranges[name] = LayerRange(*layers)
        node_flow[name], node_capacity[name] = where.rate("flow_tokens_per_s"), where.rate("capacity_tokens_per_s")
    arc_flow, arc_capacity = {}, {}
    for i, arc in enumerate(fields.items("arcs")):
        where = _Fields(arc, source, f"arcs[{i}]")
        ends = where.text("from"), where.text("to")
        for key, end in zip(("from", "to"), ends, strict=True):
            if end != COORDINATOR and end not in ranges:
                raise ClusterSpecError(f"{source}: arcs[{i}].{key}: {end!r} is neither {COORDINATOR!r} nor a node "
                                       f"the plan places layers on")
        if cluster.link(*ends) is None:
            raise ClusterSpecError(f"{source}: arcs[{i}]: the plan's cluster has no link {ends[0]} -> {ends[1]}")
        arc_flow[ends], arc_capacity[ends] = where.rate("flow_tokens_per_s"), where.rate("capacity_tokens_per_s")
    min_cut = fields.get("min_cut", [])
    if not (isinstance(min_cut, list) and all(isinstance(x, str) for x in min_cut)):
        raise ClusterSpecError(f"{source}: min_cut: expected a list of strings, got {min_cut!r}")
    flow = FlowResult(
        value=fields.rate("max_flow_tokens_per_s"), upper_bound=fields.rate("upper_bound_tokens_per_s"),
        node_flow=node_flow, node_capacity=node_capacity, arc_flow=arc_flow, arc_capacity=arc_capacity,
        min_cut=tuple(min_cut), graph=fields.choice("graph", tuple(GRAPHS), "split"),
        routing=_routing(fields.get("routing", "spread"), source),
    )
    method = fields.need("method")
    if not isinstance(method, str):
        raise ClusterSpecError(f"{source}: method: expected a string, got {method!r}")
    partial = fields.get("partial_inference", False)
    if not isinstance(partial, bool):
        raise ClusterSpecError(f"{source}: partial_inference: expected true or false, got {partial!r}")
    details = fields.get("details", None) or {}
    if not isinstance(details, dict):
        raise ClusterSpecError(f"{source}: details: expected a mapping, got {type(details).__name__}")
    return Plan(cluster, model, Placement(ranges), flow, method,
                fields.choice("throughput_model", tuple(THROUGHPUT_SOURCES), "reference"), partial, details,
                _public_keys(data.get("public_keys") or {}, source))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Fields:
    """One mapping of a plan file, read with its path in every message (`plan.yaml: arcs[3].to: ...`)."""

    def __init__(self, data: Any, source: str, item: str = ""):
        self.data, self.source, self.item = data, source, item  # item: "" (the top) or e.g. "arcs[3]"
        self.where = f"{source}: {item}" if item else source
        if not isinstance(data, dict):
            raise ClusterSpecError(f"{self.where}: expected a mapping, got {data!r}")

    def _at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.item else f"{self.where}: {key}"

    def need(self, key: str) -> Any:
        if key not in self.data:
            owner = f"{self.item} has no" if self.item else "no"
            raise ClusterSpecError(f"{self.source}: malformed plan: {owner} {key!r} field (a plan written by "
                                   f"`vllm-helix plan` has one)")
        return self.data[key]

    def text(self, key: str) -> str:
        """A name (a node's, an arc's end): a string, so a list there is this error, not an unhashable TypeError."""
        value = self.need(key)
        if not isinstance(value, str):
            raise ClusterSpecError(f"{self._at(key)}: expected a name (a string), got {value!r:.80}")
        return value

    def get(self, key: str, default: Any) -> Any:
        return self.data.get(key, default)

    def items(self, key: str, optional: bool = False) -> list[dict]:
        """A list of mappings (`nodes`, `arcs`, `profiles`); optional ones may be absent or empty."""
        value = self.data.get(key) if optional else self.need(key)
        if optional and value is None:
            return []
        if not isinstance(value, list):
            raise ClusterSpecError(f"{self._at(key)}: expected a list of mappings, got {value!r:.80}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise ClusterSpecError(f"{self.where}: {key}[{i}]: expected a mapping, got {item!r:.80}")
        return value

    def rate(self, key: str) -> float:
        """A flow or capacity in tokens/s: a finite number >= 0."""
        value = self.need(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ClusterSpecError(f"{self._at(key)}: expected tokens/s, a finite number >= 0, got {value!r}")
        return float(value)

    def choice(self, key: str, known: tuple[str, ...], default: str) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or value not in known:
            raise ClusterSpecError(f"{self._at(key)}: {value!r} is not one of {sorted(known)}")
        return value


def _routing(name: Any, source: str) -> str:
    if not isinstance(name, str) or name not in ROUTINGS:
        raise ClusterSpecError(f"{source}: routing: {name!r} is not one of {sorted(ROUTINGS)}")
    return name


def _public_keys(keys: Any, source: str) -> dict[str, str]:
    if not (isinstance(keys, dict) and all(isinstance(k, str) and len(k) == 40 for k in keys.values())):
        raise ClusterSpecError(f"{source}: public_keys: expected 'name: <40-character Z85 key>' entries")
    return {str(name): key for name, key in keys.items()}
