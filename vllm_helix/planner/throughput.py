"""Node throughput model: T(node, k) = tokens/s through k layers, max layers and KV capacity.

Callers use `capacity_table(cluster, model, source)`; a source is anything with
`node_capacity(node, cluster, model) -> NodeCapacity`. Two ship here:

* `ReferenceThroughput` — the reference system's "typical batch" model (helix-spec §2.4): a 10-step
  fixed point over the cluster's GPU mix, then each node's throughput at a typical prompt/decode batch.
  It reproduces the reference's numbers exactly (U = 2803.861 on single24).
* `ProfileThroughput` — steady-state throughput from a profile at a fixed batch (prompt P, decode D tokens
  per batch), independent of the cluster mix; also what measured profiles plug into.
* `EstimatedThroughput` — a roofline estimate from data-sheet bandwidth/compute, for GPUs (or CPUs) and
  models without a profile.
* `MeasuredThroughput` — per node: its measured profile (`vllm-helix profile`, `--profiles DIR`) where one
  covers (model, device), else the bundled profile, else the estimate; `node_sources` says which.

`choose_source("auto", ...)` picks measured when a measured profile covers any node, else the first of
reference / profile / estimate that covers the cluster and model.

`capacity_table` then applies what every source shares: the NIC cap (a node cannot take in more tokens
than its NIC carries activations for) and the VRAM cap on layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.cluster import ClusterSpec, NodeSpec
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.profiles import GPUProfile, bundled_gpu_types, has_profiles, measured_profile, profile_for

AVG_INPUT_LEN = 750
AVG_OUTPUT_LEN = 240
KV_CACHE_HWM = 0.3
FIXED_POINT_STEPS = 10
VRAM_FOR_WEIGHTS = 0.5  # the reference caps weights at half the VRAM; the rest is KV cache and activations


@dataclass(frozen=True, slots=True)
class NodeCapacity:
    """What one node can do with k = 1..max_layers layers (tuples indexed by k - 1)."""

    tokens_per_s: tuple[float, ...]
    kv_slots: tuple[int, ...]  # token-layer KV slots with k layers loaded

    @property
    def max_layers(self) -> int:
        return len(self.tokens_per_s)

    def throughput(self, k: int) -> float:
        """Tokens/s through all k layers; 0 for k = 0 (unused node)."""
        return self.tokens_per_s[k - 1] if k else 0.0

    def best_layer_throughput(self) -> float:
        """max_k k*T(k): layer-passes per second at the node's most efficient size."""
        return max(k * t for k, t in enumerate(self.tokens_per_s, start=1))


class ThroughputSource(Protocol):
    name: str

    def node_capacity(self, node: NodeSpec, cluster: ClusterSpec, model: ModelSpec) -> NodeCapacity: ...


def _profile_for(node: NodeSpec, model: ModelSpec) -> GPUProfile:
    try:
        return profile_for(model, node.gpu_type)
    except ClusterSpecError as exc:
        raise ClusterSpecError(f"node {node.name!r}: {exc}") from None


# ------------------------------------------------------------------ reference "typical batch" model

# helix-spec §2.4: typical layers per GPU type (set A; set B if A cannot hold 1.2 model copies)
# and the initial normalized performance guesses of the fixed point.
_TYPICAL: dict[str, tuple[dict[str, int], dict[str, int], dict[str, float]]] = {
    "llama2_70b": (
        {"A100": 8, "V100": 3, "L4": 4, "L4x2": 9, "T4": 3, "T4x2": 6, "T4x4": 12},
        {"A100": 12, "V100": 4, "L4": 7, "L4x2": 14, "T4": 4, "T4x2": 9, "T4x4": 18},
        {"A100": 80, "V100": 40, "L4": 20, "L4x2": 30, "T4": 12.5, "T4x2": 20, "T4x4": 30},
    ),
    "llama1_30b": (
        {"A100": 12, "V100": 4, "L4": 8, "L4x2": 14, "T4": 4, "T4x2": 10, "T4x4": 20},
        {"A100": 18, "V100": 7, "L4": 11, "L4x2": 22, "T4": 7, "T4x2": 15, "T4x4": 30},
        {"A100": 48, "V100": 25, "L4": 9, "L4x2": 15, "T4": 8, "T4x2": 15, "T4x4": 23},
    ),
}


def typical_throughput(
    profile: GPUProfile, k: int, num_layers: int, mix: Mapping[str, int], typical_layers: Mapping[str, int],
    perf: Mapping[str, float],
) -> float:
    """Reference TP_t(k; P): tokens/s through k layers at the typical batch for this cluster mix."""
    weight = {u: mix[u] * typical_layers[u] for u in mix}
    mean_tau = sum(weight[u] / perf[u] for u in mix) / sum(weight.values())
    tau = 1 / perf[profile.gpu]
    share = k * tau / ((num_layers - k) * mean_tau + k * tau)  # fraction of a round trip on this node
    slots = int(KV_CACHE_HWM * profile.kv_slots(k) / k)
    seq_len = AVG_INPUT_LEN + AVG_OUTPUT_LEN
    r = (slots / seq_len) * share / AVG_OUTPUT_LEN  # prompts per batch
    p = round(r * AVG_INPUT_LEN)  # banker's rounding, as the reference
    d = round((slots / seq_len) * share)
    if r > 1:
        r, p, d = 1, AVG_INPUT_LEN, AVG_OUTPUT_LEN
    f_p, f_d = profile.prompt_latency, profile.decode_latency
    if r >= 1:
        return (p + d) / (k * (f_p(p) + f_d(d)))
    s = 1 / r  # one whole prompt every s batches
    return s * (p + d) / (k * (f_p(int(p * s)) + s * f_d(d)))


@dataclass
class ReferenceThroughput:
    """The reference's composition-dependent typical-batch throughput (reproduces its numbers)."""

    name: str = "reference"

    def tables(self, cluster: ClusterSpec, model: ModelSpec) -> dict[str, tuple[float, ...]]:
        """TP_t(k) for every GPU type of the cluster, k = 1..K_t."""
        if model.profile_name not in _TYPICAL:
            raise ClusterSpecError(f"the reference throughput model knows only {sorted(_TYPICAL)}")
        set_a, set_b, perf0 = _TYPICAL[model.profile_name]
        mix = cluster.composition()
        profiles = {t: _profile_for(_first_of_type(cluster, t), model) for t in mix}
        unknown = sorted(set(mix) - set(set_a))
        if unknown:
            raise ClusterSpecError(f"the reference throughput model has no typical layers for {unknown}")
        held = sum(mix[t] * set_a[t] for t in mix)
        typical = set_a if held >= 1.2 * model.num_layers else set_b
        perf = {t: float(perf0[t]) for t in mix}
        for _ in range(FIXED_POINT_STEPS):
            perf = {
                t: typical[t] * typical_throughput(profiles[t], typical[t], model.num_layers, mix, typical, perf)
                for t in mix
            }
        return {
            t: tuple(
                typical_throughput(p, k, model.num_layers, mix, typical, perf) for k in range(1, p.max_layers + 1)
            )
            for t, p in profiles.items()
        }

    def node_capacity(self, node: NodeSpec, cluster: ClusterSpec, model: ModelSpec) -> NodeCapacity:
        key = (id(cluster), model.name)
        if getattr(self, "_key", None) != key:  # the fixed point is per cluster; cache the last one
            self._key, self._tables = key, self.tables(cluster, model)
        profile = _profile_for(node, model)
        slots = tuple(profile.kv_slots(k) for k in range(1, profile.max_layers + 1))
        return NodeCapacity(self._tables[node.gpu_type], slots)


@dataclass
class ProfileThroughput:
    """Throughput at a fixed steady-state batch: `prompt_tokens` of prefill plus `decode_seqs` decode steps."""

    prompt_tokens: int = 750
    decode_seqs: int = 32
    name: str = "profile"

    def node_capacity(self, node: NodeSpec, cluster: ClusterSpec, model: ModelSpec) -> NodeCapacity:
        profile = _profile_for(node, model)
        per_layer = profile.prompt_latency(self.prompt_tokens) + profile.decode_latency(self.decode_seqs)
        tokens = self.prompt_tokens + self.decode_seqs
        return NodeCapacity(  # a batch through k layers: the per-batch overhead once, then k layers
            tuple(tokens / (profile.step_overhead_s + k * per_layer) for k in range(1, profile.max_layers + 1)),
            tuple(profile.kv_slots(k) for k in range(1, profile.max_layers + 1)),
        )


# Peak memory bandwidth (bytes/s) and dense 16-bit compute (FLOP/s) per device, from vendor data sheets;
# "cpu" is a conservative server-socket figure. Used only where no measured profile exists.
DEVICE_SPECS = {
    "H100": (3.35e12, 989e12), "H200": (4.8e12, 989e12), "A100": (1.555e12, 312e12), "A10G": (0.6e12, 125e12),
    "L40S": (0.864e12, 362e12), "L4": (0.3e12, 121e12), "V100": (0.9e12, 125e12), "T4": (0.32e12, 65e12),
    "cpu": (20e9, 1e12),
}


@dataclass
class EstimatedThroughput:
    """Roofline estimate for unprofiled GPUs: a batch of `prompt_tokens` + `decode_seqs` tokens per layer costs
    max(weights / bandwidth, 2 * params * tokens / compute), at `efficiency` of the data-sheet peaks."""

    prompt_tokens: int = 750
    decode_seqs: int = 32
    efficiency: float = 0.5
    name: str = "estimate"

    def layer_seconds(self, node: NodeSpec, model: ModelSpec, tokens: float) -> float:
        """What one layer costs on `node` for a batch of `tokens` tokens."""
        if node.gpu not in DEVICE_SPECS:
            raise ClusterSpecError(
                f"node {node.name!r}: no estimate for GPU {node.gpu!r}; known: {sorted(DEVICE_SPECS)}")
        bandwidth, flops = (x * node.gpu_count * self.efficiency for x in DEVICE_SPECS[node.gpu])
        params = model.layer_bytes / 2  # 16-bit weights
        return max(model.layer_bytes / bandwidth, 2 * params * tokens / flops)

    def node_capacity(self, node: NodeSpec, cluster: ClusterSpec, model: ModelSpec) -> NodeCapacity:
        tokens = self.prompt_tokens + self.decode_seqs
        per_layer = self.layer_seconds(node, model, tokens)
        k_max = max_layers_in_vram(node, model)
        kv_per_token = max(model.kv_bytes_per_token_layer, 1)
        kv_room = [max(0.0, 0.9 * node.vram_bytes - k * model.layer_bytes) for k in range(1, k_max + 1)]
        return NodeCapacity(
            tuple(tokens / (k * per_layer) for k in range(1, k_max + 1)),
            tuple(int(room / kv_per_token) for room in kv_room),  # token-layer slots
        )


@dataclass
class MeasuredThroughput:
    """Per node, the best numbers there are: measured profile, else bundled profile, else the estimate."""

    name: str = "measured"

    def node_capacity(self, node: NodeSpec, cluster: ClusterSpec, model: ModelSpec) -> NodeCapacity:
        if node_source(node, model, self.name) == "estimate":
            return EstimatedThroughput().node_capacity(node, cluster, model)
        return ProfileThroughput().node_capacity(node, cluster, model)


def node_source(node: NodeSpec, model: ModelSpec, throughput: str) -> str:
    """Where a node's throughput came from under source `throughput`: measured, bundled or estimate."""
    if throughput == "estimate":
        return "estimate"
    if measured_profile(model.name, node.gpu_type) is not None:
        return "measured"
    if throughput == "measured" and not has_profiles(model, {node.gpu_type}):
        return "estimate"
    return "bundled"


def node_sources(cluster: ClusterSpec, model: ModelSpec, throughput: str) -> dict[str, str]:
    return {n.name: node_source(n, model, throughput) for n in cluster.nodes}


def _first_of_type(cluster: ClusterSpec, gpu_type: str) -> NodeSpec:
    return next(n for n in cluster.nodes if n.gpu_type == gpu_type)


THROUGHPUT_SOURCES: dict[str, type] = {
    "reference": ReferenceThroughput, "profile": ProfileThroughput, "estimate": EstimatedThroughput,
    "measured": MeasuredThroughput,
}


def choose_source(name: str, cluster: ClusterSpec, model: ModelSpec) -> str:
    """Resolve "auto": the reference's tables where they cover the model and every GPU type of the cluster,
    else the measured profiles where the model has one for every GPU type, else the roofline estimate."""
    if name != "auto":
        return name
    gpu_types = set(cluster.composition())
    if any(measured_profile(model.name, g) is not None for g in gpu_types):
        return "measured"
    if model.profile_name is None or not gpu_types <= set(bundled_gpu_types(model.profile_name)):
        return "estimate"
    if model.profile_name in _TYPICAL and gpu_types <= set(_TYPICAL[model.profile_name][0]):
        return "reference"
    return "profile"


def get_source(name: str | ThroughputSource) -> ThroughputSource:
    if not isinstance(name, str):
        return name
    try:
        return THROUGHPUT_SOURCES[name]()
    except KeyError:
        raise ClusterSpecError(f"unknown throughput model {name!r}; choose from {sorted(THROUGHPUT_SOURCES)}") from None


# ------------------------------------------------------------------------------------ the table


def max_layers_in_vram(node: NodeSpec, model: ModelSpec) -> int:
    """Layers whose weights fit in the share of VRAM reserved for weights."""
    return int(VRAM_FOR_WEIGHTS * node.vram_bytes // model.layer_bytes) if model.layer_bytes else 10**9


def capacity_table(
    cluster: ClusterSpec, model: ModelSpec, source: str | ThroughputSource = "reference"
) -> dict[str, NodeCapacity]:
    """Per-node capacity with the NIC cap and the VRAM layer cap applied (reference `T_i(k)`)."""
    source = get_source(choose_source(source, cluster, model) if isinstance(source, str) else source)
    table = {}
    for node in cluster.nodes:
        raw = source.node_capacity(node, cluster, model)
        nic_cap = min(node.nic_in_bytes_per_s, node.nic_out_bytes_per_s) / model.activation_bytes_per_token
        # a node busy all the time under a CPU quota of q cores (one core solo) sustains q of its solo speed
        share = min(1.0, node.cpu_quota) if node.cpu_quota is not None else 1.0
        k_max = min(raw.max_layers, max(max_layers_in_vram(node, model), 0))
        table[node.name] = NodeCapacity(
            tuple(min(t * share, nic_cap) for t in raw.tokens_per_s[:k_max]), raw.kv_slots[:k_max]
        )
    return table


def upper_bound(capacities: Mapping[str, NodeCapacity], num_layers: int) -> float:
    """'Max compute throughput' U = sum_i max_k k*T_i(k) / L: every token needs L layer passes."""
    return sum(c.best_layer_throughput() for c in capacities.values() if c.max_layers) / num_layers
