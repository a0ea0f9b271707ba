import re
import subprocess
import sys

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
        # numbers past the planner's range: inf overflowed its flow computation, NaN its VRAM table
        ({"default_link.bandwidth": "1e400Gbps"}, r"default_link\.bandwidth: bandwidth '1e400Gbps' is out of range"),
        ({"default_link.bandwidth": "1e-300bps"}, r"default_link\.bandwidth: must be at least 1kbps"),
        ({"links.0.bandwidth": "1e300Gbps"}, r"links\[0\]\.bandwidth: must be at most 1000TB/s"),
        ({"links.0.latency": "1e300s"}, r"links\[0\]\.latency: must be at most 1 hour"),
        ({"links.0.latency": "-5s"}, r"links\[0\]\.latency: .*must not be negative"),
        ({"nodes.0.vram": "1e400GB"}, r"nodes\[0\] \(a100-0\)\.vram: size '1e400GB' is out of range"),
        ({"nodes.0.vram": "1e300TB"}, r"\.vram: size '1e300TB' is out of range"),
        ({"nodes.0.vram": "2000TB"}, r"\.vram: must be at most"),
        ({"nodes.0.nic_in": "1e30GB/s"}, r"\(a100-0\)\.nic_in: must be at most 1000TB/s"),
        ({"coordinator.nic_out": "1e30GB/s"}, r"coordinator\.nic_out: must be at most"),
        ({"nodes.1.gpus": 100000000}, r"nodes\[1\] \(l4-0\)\.gpus: must be at most 512, got 100000000"),
        ({"nodes.1.gpus": True}, r"\.gpus: must be an integer, got True"),
        ({"nodes.0.cpu_quota": float("inf")}, r"\(a100-0\)\.cpu_quota: must be a finite number"),
        ({"nodes.0.cpu_quota": True}, r"\.cpu_quota: must be a number, got True"),
        ({"nodes.0.cpu_quota": "half"}, r"\.cpu_quota: must be a number, got 'half'"),
        ({"host_cores": {"local": float("inf")}}, r"host_cores: local: cores must be a finite number"),
        ({"node_defaults": [1]}, r"node_defaults: must be a mapping"),
        ({"node_defaults": "A100"}, r"node_defaults: must be a mapping"),
        ({"name": [1]}, r"name: must be a non-empty name"),
        # a node name names its key file, trace and log: a path or an endless name crashed `plan` and `keys`
        ({"nodes.1.name": "a/b"}, r"nodes\[1\]\.name: 'a/b' is not a node name: use 1 to 64 letters"),
        ({"nodes.1.name": "a\0b"}, r"nodes\[1\]\.name: 'a\\x00b' is not a node name"),
        ({"nodes.1.name": "x" * 300}, r"nodes\[1\]\.name: 'x{80}' is not a node name"),
        ({"nodes.1.name": "-a"}, r"is not a node name"),
        ({"links.0.between": ["a100-0", "a100-0"]}, r"links\[0\]\.between: a link from 'a100-0' to itself"),
        ({"links.1.to": "coordinator"}, r"links\[1\]\.to: a link from 'coordinator' to itself"),
        ({"links.1": {"from": "l4-0", "to": "a100-0", "bandwidth": "1Gbps"}},
         r"links\[1\]: the link from 'l4-0' to 'a100-0' is already given by links\[0\]"),
    ],
)
def test_validation_errors_name_file_field_and_problem(tmp_path, changes, message):
    path = write(tmp_path, broken(**changes))
    with pytest.raises(ClusterSpecError, match=message) as info:
        load_cluster(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "address, message",
    [
        ("10.0.0.1:notaport", r"port 'notaport' is not a number in 1\.\.65535"),
        ("10.0.0.1:99999", r"port '99999' is not a number in 1\.\.65535"),
        ("10.0.0.1:0", r"port '0' is not a number"),
        ("10.0.0.1", r"'10\.0\.0\.1' is not 'local' or HOST:PORT"),
        (":6100", r"is not 'local' or HOST:PORT"),
        ("::::", r"IPv6 addresses are not supported"),
        ("[::1]:6100", r"IPv6 addresses are not supported"),
        ("not a host:6100", r"'not a host' is not a host name or IPv4 address"),
        ("*:6100", r"'\*' is not a host name"),
        ([1, 2], r"must be 'local' or HOST:PORT, got \[1, 2\]"),
        (6100, r"must be 'local' or HOST:PORT, got 6100"),
    ],
)
@pytest.mark.parametrize("where, field", [("nodes.1.address", r"nodes\[1\] \(l4-0\)\.address"),
                                          ("coordinator.address", r"coordinator\.address")])
def test_addresses_are_local_or_host_and_port(tmp_path, address, message, where, field):
    with pytest.raises(ClusterSpecError, match=f"cluster.yaml: {field}: .*{message}"):
        load_cluster(write(tmp_path, broken(**{where: address})))


@pytest.mark.parametrize("address", ["local", "10.0.0.7:6100", "gpu-7.example.org:65535", "tcp://127.0.0.1:1"])
def test_good_addresses_are_kept_as_written(tmp_path, address):
    assert load_cluster(write(tmp_path, broken(**{"nodes.1.address": address}))).node("l4-0").address == address


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"nodes.0.address": "10.0.0.7:6100"}, r"nodes\[1\] \(l4-0\)\.address: '10\.0\.0\.7:6100' is also the "
                                                r"address of node 'a100-0'"),
        ({"nodes.0.address": "tcp://10.0.0.7:6100"}, r"is also the address of node 'a100-0'"),
        ({"coordinator.address": "10.0.0.7:6100"}, r"\(l4-0\)\.address: .* is also the address of the coordinator"),
    ],
)
def test_two_processes_cannot_share_one_address(tmp_path, changes, message):
    with pytest.raises(ClusterSpecError, match=message):
        load_cluster(write(tmp_path, broken(**changes)))


def test_local_nodes_may_share_the_word_local(tmp_path):
    cluster = load_cluster(write(tmp_path, broken(**{"nodes.1.address": "local"})))
    assert [n.address for n in cluster.nodes] == ["local", "local"]


def test_an_empty_cluster_file_says_so(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ClusterSpecError) as info:
        load_cluster(tmp_path / "empty.yaml")
    assert str(info.value) == f"{tmp_path / 'empty.yaml'}: expected a mapping, got nothing (the file is empty)"


def cli(*args):
    """The `vllm-helix` command as users run it (as tests/test_cli.py does): a bad file is exit 2, one line."""
    proc = subprocess.run([sys.executable, "-m", "vllm_helix.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"nodes.0.address": "10.0.0.1:notaport"}, r"nodes\[0\] \(a100-0\)\.address: .*port 'notaport'"),
        ({"nodes.0.address": "10.0.0.7:6100"}, r"is also the address of node 'a100-0'"),
        ({"default_link.bandwidth": "1e400Gbps"}, r"default_link\.bandwidth: .*out of range"),
        ({"nodes.0.vram": "1e300TB"}, r"\.vram: .*out of range"),
        ({"node_defaults": [1]}, r"node_defaults: must be a mapping"),
    ],
)
def test_plan_refuses_a_bad_cluster_with_one_line_and_writes_nothing(tmp_path, changes, message):
    path = write(tmp_path, broken(**changes))
    proc = cli("plan", "--cluster", path, "--method", "petals", "-o", tmp_path / "plan.yaml")
    assert proc.returncode == 2, proc.stderr
    assert re.search(f"{re.escape(str(path))}: .*{message}", proc.stderr), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "plan.yaml").exists()


def test_unreadable_inputs(tmp_path):
    with pytest.raises(ClusterSpecError, match="cannot read file"):
        load_cluster(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("nodes: [unclosed")
    with pytest.raises(ClusterSpecError, match="not valid YAML"):
        load_cluster(tmp_path / "bad.yaml")
    with pytest.raises(ClusterSpecError, match="expected a mapping"):
        cluster_from_dict(["not", "a", "mapping"], "x.yaml")
