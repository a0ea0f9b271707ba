"""Readers for the reference system's .ini files, on the bundled reference example and broken copies."""

import pytest

from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.cluster import COORDINATOR
from vllm_helix.planner.examples import reference_dir
from vllm_helix.planner.files import load_cluster
from vllm_helix.planner.ini import (
    read_cluster_ini,
    read_machine_profile,
    read_simulator_cluster_ini,
    read_solution_ini,
)

SINGLE24 = reference_dir() / "single24.ini"


def test_single24_topology_and_units():
    cluster = read_cluster_ini(SINGLE24)
    assert cluster.composition() == {"A100": 4, "L4": 8, "T4": 12}
    assert [n.gpu_type for n in cluster.nodes][:7] == ["L4", "T4", "T4", "L4", "T4", "L4", "A100"]
    # 24 source arcs + 24 sink arcs + 276 node pairs in both directions
    assert len(cluster.links) == 24 + 24 + 2 * 276
    link = cluster.link("n0", "n1")
    assert link.bandwidth_bytes_per_s == 1e9  # "1000 * mbps" is bytes/s in the reference's convention
    assert link.latency_s == pytest.approx(1e-3)
    assert cluster.link(COORDINATOR, "n5") is not None and cluster.link("n5", COORDINATOR) is not None
    assert cluster.node("n6").vram_bytes == 40e9 and cluster.node("n6").nic_in_bytes_per_s == 10e9


def test_three_region_cluster_keeps_per_link_values():
    cluster = read_cluster_ini(reference_dir() / "3cluster24.ini")
    assert cluster.link("n0", "n1").bandwidth_bytes_per_s == 1323e6
    assert cluster.link(COORDINATOR, "n0").bandwidth_bytes_per_s == pytest.approx(14.2e6)
    assert cluster.link(COORDINATOR, "n0").latency_s == pytest.approx(0.055)


def test_machine_profile():
    types, coordinator = read_machine_profile(reference_dir() / "machine_profile.ini")
    assert types["T4x4"].vram_bytes == 64e9
    assert coordinator.nic_out_bytes_per_s == 10e9


def test_solution_and_simulator_cluster_files():
    cluster = read_cluster_ini(SINGLE24)
    placement = read_solution_ini(reference_dir() / "layouts/ilp/ilp_sol.ini", cluster)
    assert str(placement["n0"]) == "[7, 11)"
    homogeneous = read_solution_ini(reference_dir() / "layouts/homogeneous/homogeneous_sol.ini", cluster)
    assert len(homogeneous.used_nodes) == 9  # '[]' means unused
    sim = read_simulator_cluster_ini(reference_dir() / "layouts/ilp/simulator_cluster.ini")
    assert len(sim.cluster.nodes) == 24 and sim.kv_slots["n0"] == 3004416
    assert len(sim.link_order) == 30 and sim.link_order[0] == (COORDINATOR, "n15")


def test_load_cluster_dispatches_on_suffix():
    assert load_cluster(SINGLE24) == read_cluster_ini(SINGLE24)


def edited(tmp_path, name, source, old, new):
    text = source.read_text()
    assert old in text, old
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("[NodeNames]\ntotal_compute_nodes=24", "[Nodes]\nx=1", r"\[NodeNames\]: missing section"),
        ("[ComputeNode-3]\ntype=L4", "[ComputeNode-3]\ntype=H200", r"\[ComputeNode-3\] type: unknown GPU type 'H200'"),
        ("[Link-0-1]\nbandwidth=1000 * mbps", "[Link-0-1]\nbandwidth=1000 * furlongs",
         r"\[Link-0-1\] bandwidth: cannot read"),
        ("[Link-0-1]\nbandwidth=1000 * mbps", "[Link-0-1]\nbandwidth=0 * mbps", r"\[Link-0-1\] bandwidth: must be > 0"),
        ("[Link-0-1]", "[Link-0-99]", r"\[Link-0-99\]: node id '99' out of range"),
        ("[Link-source-0]\nbandwidth=1000 * mbps\nlatency=1 * MilliSec", "[Link-source-0]\nlatency=1 * MilliSec",
         r"\[Link-source-0\] bandwidth: missing key"),
        ("connected_nodes=[0, 1, 2,", "connected_nodes=[0, 31, 2,", r"\[SourceNode\] connected_nodes: node id 31"),
        ("[NodeNames]\n", "[NodeNames\n", r"not a valid .ini file"),
    ],
)
def test_cluster_ini_errors(tmp_path, old, new, message):
    with pytest.raises(ClusterSpecError, match=message):
        read_cluster_ini(edited(tmp_path, "c.ini", SINGLE24, old, new))


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("compute_node_2=[7, 8, 9, 10]", "compute_node_2=[7, 9, 10]", r"compute_node_2: layers must be contiguous"),
        ("compute_node_2=[7, 8, 9, 10]", "compute_node_40=[7, 8, 9, 10]", r"compute_node_40: node id out of range"),
        ("compute_node_2=[7, 8, 9, 10]", "compute_node_2=[7, 8", r"compute_node_2: cannot read"),
        ("[Solution]", "[Answer]", r"\[Solution\]: missing section"),
    ],
)
def test_solution_ini_errors(tmp_path, old, new, message):
    cluster = read_cluster_ini(SINGLE24)
    path = edited(tmp_path, "sol.ini", reference_dir() / "layouts/ilp/ilp_sol.ini", old, new)
    with pytest.raises(ClusterSpecError, match=message):
        read_solution_ini(path, cluster)
