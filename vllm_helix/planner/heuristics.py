"""Heuristic placements from the reference system (helix-spec §4.6), deterministic for a seed.

* petals — each node, in a seeded random order, takes its max layers where the layers so far have the
  least throughput; routes use partial inference (windows overlap).
* swarm — S equal stages of L/S layers; nodes, fastest first, join the stage with the least throughput.
* homogeneous — separate pipelines, fastest GPU types first, each node filled to its max layers; the last
  incomplete pipeline is dropped (its nodes stay unused).

Randomness uses `random.Random(seed)`, which draws the same MT19937 sequence as the reference's
`random.seed(seed)`, so the reference's published layouts come out unchanged.
The reference also caps out-links per node (`max_out_links_per_node`); every compatible link is kept here,
which is the same for its complete 24-node topologies and lets the max flow choose.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from vllm_helix.errors import InfeasiblePlacement
from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import LayerRange, Placement, PlacementResult
from vllm_helix.planner.throughput import NodeCapacity


def _usable(cluster: ClusterSpec, capacities: Mapping[str, NodeCapacity]) -> list[str]:
    names = [n for n in cluster.node_names if capacities[n].max_layers > 0]
    if not names:
        raise InfeasiblePlacement("no node can hold even one layer of the model")
    return names


def _check_fits(names: list[str], capacities: Mapping[str, NodeCapacity], model: ModelSpec) -> None:
    total = sum(capacities[n].max_layers for n in names)
    if total < model.num_layers:
        raise InfeasiblePlacement(
            f"the cluster holds at most {total} of the model's {model.num_layers} layers "
            f"({(model.num_layers - total) * model.layer_bytes / 1e9:.1f} GB of weights do not fit)"
        )


def petals(
    cluster: ClusterSpec, model: ModelSpec, capacities: Mapping[str, NodeCapacity], *, seed: int = 0, **_: object
) -> PlacementResult:
    names = _usable(cluster, capacities)
    _check_fits(names, capacities, model)
    order = [(capacities[n].throughput(capacities[n].max_layers), i) for i, n in enumerate(names)]
    random.Random(seed).shuffle(order)  # the reference shuffles (its comment says sorts)
    layer_throughput = [0.0] * model.num_layers
    ranges = {}
    for perf, i in order:
        k = min(capacities[names[i]].max_layers, model.num_layers)
        start = min(range(model.num_layers - k + 1), key=lambda x: sorted(layer_throughput[x : x + k]))
        for layer in range(start, start + k):
            layer_throughput[layer] += perf
        ranges[names[i]] = LayerRange(start, start + k)
    return PlacementResult(Placement(dict(sorted(ranges.items(), key=lambda kv: names.index(kv[0])))), True,
                           {"seed": seed})


def default_num_stages(num_layers: int, min_max_layers: int) -> int:
    """Fewest equal stages whose size fits every node (80 layers, T4 max 4 -> 20 stages)."""
    for stages in range(1, num_layers + 1):
        if num_layers % stages == 0 and num_layers // stages <= min_max_layers:
            return stages
    raise InfeasiblePlacement("no equal stage size fits every node")


def swarm(
    cluster: ClusterSpec, model: ModelSpec, capacities: Mapping[str, NodeCapacity], *,
    num_stages: int | None = None, **_: object,
) -> PlacementResult:
    names = _usable(cluster, capacities)
    _check_fits(names, capacities, model)
    stages = num_stages or default_num_stages(model.num_layers, min(capacities[n].max_layers for n in names))
    if model.num_layers % stages:
        raise InfeasiblePlacement(f"{stages} stages do not divide the model's {model.num_layers} layers")
    size = model.num_layers // stages
    too_small = [n for n in names if capacities[n].max_layers < size]
    if too_small:
        raise InfeasiblePlacement(f"stages of {size} layers do not fit nodes {too_small}; use more stages")
    if len(names) < stages:
        raise InfeasiblePlacement(f"{stages} stages need at least {stages} nodes, the cluster has {len(names)}")
    stage_throughput = [0.0] * stages
    ranges = {}
    # fastest first; equal speeds by descending index, as the reference's sort of (throughput, index) pairs
    fastest_first = sorted(range(len(names)), key=lambda i: (capacities[names[i]].throughput(size), i), reverse=True)
    for name in (names[i] for i in fastest_first):
        stage = stage_throughput.index(min(stage_throughput))
        stage_throughput[stage] += capacities[name].throughput(size)
        ranges[name] = LayerRange(stage * size, (stage + 1) * size)
    return PlacementResult(Placement({n: ranges[n] for n in names}), False, {"num_stages": stages})


def homogeneous(
    cluster: ClusterSpec, model: ModelSpec, capacities: Mapping[str, NodeCapacity], *, seed: int = 0, **_: object
) -> PlacementResult:
    names = _usable(cluster, capacities)
    rng = random.Random(seed)
    by_type: dict[str, list[str]] = {}
    for name in names:
        by_type.setdefault(cluster.node(name).gpu_type, []).append(name)

    def type_speed(gpu_type: str) -> float:
        cap = capacities[by_type[gpu_type][0]]
        return cap.throughput(cap.max_layers) * cap.max_layers

    walk = []
    for gpu_type in sorted(by_type, key=type_speed, reverse=True):
        group = list(by_type[gpu_type])
        rng.shuffle(group)
        walk += group
    ranges, pipeline, filled = {}, {}, 0
    for name in walk:
        k = min(capacities[name].max_layers, model.num_layers - filled)
        pipeline[name] = LayerRange(filled, filled + k)
        filled += k
        if filled == model.num_layers:
            ranges.update(pipeline)
            pipeline, filled = {}, 0
    if not ranges:
        raise InfeasiblePlacement("the cluster cannot form even one full pipeline of the model")
    return PlacementResult(Placement({n: ranges[n] for n in names if n in ranges}), False,
                           {"seed": seed, "pipelines": sum(1 for r in ranges.values() if r.start == 0)})
