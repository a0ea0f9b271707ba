"""KV-balanced pipelines: a candidate source for plans that serve (Little's law, see `serving_estimate`).

Offline serving keeps as many requests in flight as the KV room admits, and every request holds KV on every
layer of the model, so the requests in flight are capped by the layer with the least KV room:
N <= watermark * min_l (sum over the nodes holding layer l of their KV slots per layer) / context. A node's
KV slots per layer shrink fast with the layers it holds (its weights take the VRAM: an A100 has 631k token
slots per layer with 8 layers of LLaMA-2-70B, 421k with 10), so the max-flow placements, which load the
fast GPUs with as many layers as their throughput allows, leave their layers the least KV room and cap N low.

For a target kappa (KV token slots per layer), every node takes the most layers at which it still has
>= kappa slots per layer, and the nodes are packed into exactly chained pipelines (the warm start's packing);
the unused nodes then join as parallel replicas (`warm_start.with_replicas`: more KV room and smaller batches
on the layers they share). Sweeping kappa from high to low trades KV room (more requests in flight) against
depth (more stages, a longer round trip); the simulator judges the trade.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.planner.milp.formulation import Formulation
from vllm_helix.planner.milp.warm_start import pipelines_by_size
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import Placement
from vllm_helix.planner.profiles import load_profile


def kv_per_layer(cluster: ClusterSpec, model: ModelSpec, form: Formulation) -> dict[str, tuple[int, ...]]:
    """KV token slots per layer of each node holding k = 1, 2, ... layers (its GPU profile); needs profiles."""
    assert model.profile_name is not None, "KV-balanced pipelines need the model's GPU profiles"
    out = {}
    for name in form.nodes:
        profile = load_profile(model.profile_name, cluster.node(name).gpu_type)
        out[name] = tuple(profile.kv_slots(k) // k for k in range(1, len(form.throughput[name]) + 1))
    return out


def kv_pipelines(form: Formulation, cluster: ClusterSpec,
                 kv: Mapping[str, tuple[int, ...]]) -> Iterator[tuple[int, Placement]]:
    """(kappa, pipelines) for every distinct per-layer KV target kappa, most KV room (fewest layers) first."""
    free = [n for n in form.nodes if n not in form.options.pins]
    kappas = sorted({v for n in free for v in kv[n]}, reverse=True)

    def layers_at(name: str, kappa: int) -> int:
        return max((k for k, v in enumerate(kv[name], 1) if v >= kappa and k >= form.min_layers), default=0)

    yield from pipelines_by_size(form, cluster, kappas, layers_at)
