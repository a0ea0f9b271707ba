import pytest
import yaml

from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.cluster import COORDINATOR, cluster_from_dict, save_cluster
from vllm_helix.planner.files import load_cluster

GOOD = {
    "name": "mixed",
    "coordinator": {"address": "local", "nic_in": "10Gbps", "nic_out": "10Gbps"},
    "nodes": [
        {"name": "a100-0", "gpu": "A100", "vram": "40GB", "nic_in": "1.25GB/s", "nic_out": "10Gbps", "region": "us"},
        {"name": "l4-0", "gpu": "L4", "gpus": 2, "vram": "48GB", "region": "eu", "address": "10.0.0.7:6100"},
    ],
    "links": [
        {"between": ["a100-0", "l4-0"], "bandwidth": "1Gbps", "latency": "40ms"},
        {"from": "coordinator", "to": "a100-0", "bandwidth": "10Gbps", "latency": "1ms"},
    ],
    "default_link": {"bandwidth": "100Mbps", "latency": "50ms"},
}


def write(tmp_path, data):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_cluster_loads_with_explicit_units(tmp_path):
    cluster = load_cluster(write(tmp_path, GOOD))
    a100, l4 = cluster.nodes
    assert a100.nic_in_bytes_per_s == 1.25e9 and a100.nic_out_bytes_per_s == 1.25e9
    assert l4.gpu_type == "L4x2" and l4.address == "10.0.0.7:6100"
    assert (a100.tensor_parallel_size, l4.tensor_parallel_size) == (1, 2)  # all of a node's gpus by default
    both_ways = cluster.link("a100-0", "l4-0"), cluster.link("l4-0", "a100-0")
    assert all(lk.bandwidth_bytes_per_s == 125e6 and lk.latency_s == pytest.approx(0.04) for lk in both_ways)
    assert cluster.link(COORDINATOR, "a100-0").bandwidth_bytes_per_s == 1.25e9
    # default_link fills the rest, including the coordinator's return paths
    assert cluster.link("l4-0", COORDINATOR).bandwidth_bytes_per_s == 12.5e6
    assert len(cluster.links) == 6


def test_round_trip_keeps_every_number(tmp_path):
    cluster = load_cluster(write(tmp_path, GOOD))
    save_cluster(cluster, tmp_path / "again.yaml")
    assert load_cluster(tmp_path / "again.yaml") == cluster


def test_a_tensor_parallel_size_below_the_gpus_survives_the_round_trip(tmp_path):
    cluster = load_cluster(write(tmp_path, broken(**{"nodes.1.tp": 1})))
    assert cluster.node("l4-0").tensor_parallel_size == 1 and cluster.node("l4-0").gpu_type == "L4x2"
    save_cluster(cluster, tmp_path / "again.yaml")
    assert load_cluster(tmp_path / "again.yaml") == cluster


def broken(**changes):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        target = data
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        if value is None:
            del target[int(leaf) if leaf.isdigit() else leaf]
        else:
            target[int(leaf) if leaf.isdigit() else leaf] = value
    return data


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"nodes.0.vram": None}, r"nodes\[0\] \(a100-0\)\.vram: is required"),
        ({"nodes.0.vram": "-1GB"}, r"nodes\[0\] \(a100-0\)\.vram: .*negative"),
        ({"nodes.0.vram": "0GB"}, r"vram: must be > 0"),
        ({"nodes.1.nic_in": "10 gigs"}, r"nodes\[1\] \(l4-0\)\.nic_in: cannot read .10 gigs. as a bandwidth"),
        ({"nodes.1.gpus": 0}, r"gpus: must be >= 1"),
        ({"nodes.1.tp": 3}, r"nodes\[1\] \(l4-0\)\.tp: tensor parallel size must be between 1 and the node's gpus "
                            r"\(2\), got 3"),
        ({"nodes.1.tp": 0}, r"\.tp: tensor parallel size must be between 1 and the node's gpus \(2\), got 0"),
        ({"nodes.1.name": "a100-0"}, r"duplicate node name"),
        ({"nodes.1.name": "coordinator"}, r"reserved"),
        ({"nodes.0.colour": "red"}, r"colour: unknown field"),
        ({"links.0.between": ["a100-0", "ghost"]}, r"links\[0\]\.between: unknown node 'ghost'"),
        ({"links.1.latency": "soon"}, r"links\[1\]\.latency: cannot read"),
        ({"links.1.bandwidth": None}, r"links\[1\]\.bandwidth: is required"),
        ({"nodes": []}, r"nodes: must be a non-empty list"),
    ],
)
def test_validation_errors_name_file_field_and_problem(tmp_path, changes, message):
    path = write(tmp_path, broken(**changes))
    with pytest.raises(ClusterSpecError, match=message) as info:
        load_cluster(path)
    assert str(path) in str(info.value)


def test_unreadable_inputs(tmp_path):
    with pytest.raises(ClusterSpecError, match="cannot read file"):
        load_cluster(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("nodes: [unclosed")
    with pytest.raises(ClusterSpecError, match="not valid YAML"):
        load_cluster(tmp_path / "bad.yaml")
    with pytest.raises(ClusterSpecError, match="expected a mapping"):
        cluster_from_dict(["not", "a", "mapping"], "x.yaml")
