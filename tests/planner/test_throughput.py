"""The reference throughput model reproduces helix-spec §2.5 exactly; caps and errors behave."""

import dataclasses

import pytest

from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.examples import reference_example
from vllm_helix.planner.throughput import ProfileThroughput, ReferenceThroughput, capacity_table, upper_bound

# helix-spec §2.5 (LLaMA-2-70B, {A100: 4, L4: 8, T4: 12}), tokens/s through k layers, k = 1..K
SPEC_TABLE = {
    "A100": [23833.9, 11384.3, 7201.4, 5264.6, 4096.7, 3124.1, 2595.7, 2045.6, 1754.4, 1392.6, 1212.2, 952.1],
    "L4": [7557.9, 3625.7, 2171.9, 1476.1, 1017.6, 747.8, 531.7],
    "T4": [5709.2, 2434.4, 1347.9, 757.9],
}


@pytest.fixture(scope="module")
def single24():
    return reference_example("ilp")


def test_typical_throughput_table_matches_the_reference(single24):
    tables = ReferenceThroughput().tables(single24.cluster, single24.model)
    assert set(tables) == set(SPEC_TABLE)
    for gpu, expected in SPEC_TABLE.items():
        assert tables[gpu] == pytest.approx(expected, abs=0.051), gpu  # the spec prints one decimal


def test_upper_bound_is_the_reference_max_compute_throughput(single24):
    caps = capacity_table(single24.cluster, single24.model)
    assert upper_bound(caps, 80) == pytest.approx(2803.860988272896, rel=1e-9)


def test_throughput_depends_on_the_cluster_mix(single24):
    """The reference model's quirk: the same GPU gets another TP in another mix (spec §2.5 note)."""
    alone = dataclasses.replace(single24.cluster, nodes=tuple(n for n in single24.cluster.nodes if n.gpu == "A100"))
    a100_alone = ReferenceThroughput().tables(alone, single24.model)["A100"][0]
    assert a100_alone == pytest.approx(55.7e3, rel=0.01)


def test_nic_caps_node_capacity(single24):
    slow = dataclasses.replace(single24.cluster.nodes[0], nic_in_bytes_per_s=16384 * 1000.0)
    cluster = dataclasses.replace(single24.cluster, nodes=(slow, *single24.cluster.nodes[1:]))
    caps = capacity_table(cluster, single24.model)
    assert max(caps["n0"].tokens_per_s) == pytest.approx(1000.0)
    assert caps["n1"].tokens_per_s[0] == pytest.approx(SPEC_TABLE["T4"][0], abs=0.051)


def test_a_cpu_quota_caps_what_a_node_sustains(single24):
    capped = dataclasses.replace(single24.cluster.nodes[6], cpu_quota=0.5)  # an A100's host capped at half a core
    cluster = dataclasses.replace(single24.cluster, nodes=(*single24.cluster.nodes[:6], capped,
                                                           *single24.cluster.nodes[7:]))
    source = ProfileThroughput()
    full = capacity_table(single24.cluster, single24.model, source)["n6"].tokens_per_s
    assert capacity_table(cluster, single24.model, source)["n6"].tokens_per_s == pytest.approx([t / 2 for t in full])


def test_vram_caps_layers(single24):
    small = dataclasses.replace(single24.cluster.nodes[6], vram_bytes=10e9)  # an A100 with 10 GB
    cluster = dataclasses.replace(single24.cluster, nodes=(*single24.cluster.nodes[:6], small,
                                                           *single24.cluster.nodes[7:]))
    assert capacity_table(cluster, single24.model)["n6"].max_layers == 3  # 5 GB for weights / 1.53 GB


def test_profile_source_is_pluggable_and_independent_of_the_mix(single24):
    caps = capacity_table(single24.cluster, single24.model, ProfileThroughput(prompt_tokens=750, decode_seqs=32))
    a100 = caps["n6"]
    assert a100.max_layers == 12 and a100.kv_slots[0] == 7973216
    assert a100.throughput(2) == pytest.approx(a100.throughput(1) / 2)


def test_unknown_gpu_type_and_model_errors(single24):
    odd = dataclasses.replace(single24.cluster.nodes[0], gpu="H100")
    cluster = dataclasses.replace(single24.cluster, nodes=(odd, *single24.cluster.nodes[1:]))
    with pytest.raises(ClusterSpecError, match="node 'n0': unknown GPU type 'H100'"):
        capacity_table(cluster, single24.model)
    no_profile = dataclasses.replace(single24.model, profile_name=None)
    with pytest.raises(ClusterSpecError, match="has no profile for device .*vllm-helix profile"):
        capacity_table(single24.cluster, no_profile, "profile")
    with pytest.raises(ClusterSpecError, match="unknown throughput model"):
        capacity_table(single24.cluster, single24.model, "magic")
