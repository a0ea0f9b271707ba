"""Readers for the reference system's .ini files, on the bundled reference example and broken copies."""

import re
import subprocess
import sys

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

# A link's values the YAML reader refuses, as the .ini readers must too (replacing a link's bandwidth and latency).
LINK_ERRORS = [
    ("bandwidth=1000 * mbps\nlatency=-5 * Sec", r"\[Link-0-1\] latency: must be >= 0, got -5s"),
    ("bandwidth=1000 * mbps\nlatency=1e400 * Sec", r"\[Link-0-1\] latency: '1e400 \* Sec' is out of range"),
    ("bandwidth=1000 * mbps\nlatency=2 * 3600", r"\[Link-0-1\] latency: cannot read"),
    ("bandwidth=1000 * mbps\nlatency=7200 * Sec", r"\[Link-0-1\] latency: must be at most 1 hour"),
    ("bandwidth=1e400\nlatency=1 * MilliSec", r"\[Link-0-1\] bandwidth: '1e400' is out of range"),
    ("bandwidth=1e-300 * bps\nlatency=1 * MilliSec", r"\[Link-0-1\] bandwidth: must be at least 1kbps"),
    ("bandwidth=1e20 * gbps\nlatency=1 * MilliSec", r"\[Link-0-1\] bandwidth: must be at most"),
]


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
        ("total_compute_nodes=24", "total_compute_nodes=True", r"\[NodeNames\] total_compute_nodes: expected an int"),
        ("connected_nodes=[0, 1, 2,", "connected_nodes=[True, 1, 2,", r"\[SourceNode\] connected_nodes: node id True"),
        *[("[Link-0-1]\nbandwidth=1000 * mbps\nlatency=1 * MilliSec", f"[Link-0-1]\n{new}", message)
          for new, message in LINK_ERRORS],
        ("[Link-0-1]", "[Link-0-0]", r"\[Link-0-0\]: a link from 'n0' to itself"),
        ("[Link-source-0]", "[Link-source-sink]", r"\[Link-source-sink\]: a link from 'coordinator' to itself"),
        # what crashed the reader: a digit int() does not take, a value that nests past the parser's stack
        ("[Link-0-1]", "[Link-\u00b2-1]", r"\[Link-\u00b2-1\]: node id '\u00b2' out of range"),
        ("total_compute_nodes=24", "total_compute_nodes=" + "-" * 3000 + "1",
         r"\[NodeNames\] total_compute_nodes: cannot read '-----.*' as a int"),
        ("total_compute_nodes=24", "total_compute_nodes=" + "-" * 200_000 + "1", r"total_compute_nodes: cannot read"),
    ],
)
def test_cluster_ini_errors(tmp_path, old, new, message):
    with pytest.raises(ClusterSpecError, match=message):
        read_cluster_ini(edited(tmp_path, "c.ini", SINGLE24, old, new))


@pytest.mark.parametrize("new, message", LINK_ERRORS)
def test_simulator_cluster_ini_checks_links_like_the_yaml_reader(tmp_path, new, message):
    head = "[link_source_compute_node_17]\nin=source\nout=compute_node_17\n"
    old, new = head + "latency=1.0 * MilliSec\nbandwidth=1000.0 * mbps", head + new
    path = edited(tmp_path, "simulator_cluster.ini", reference_dir() / "layouts/ilp/simulator_cluster.ini", old, new)
    with pytest.raises(ClusterSpecError, match=message.replace("Link-0-1", "link_source_compute_node_17")):
        read_simulator_cluster_ini(path)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("vram_size=24000.0 * MB", "vram_size=1e10 * GB", r"\[compute_node_2\] vram_size: must be at most"),
        ("inbound_nic_speed=10000.0 * mbps\noutbound_nic_speed=10000.0 * mbps\ndisk",
         "inbound_nic_speed=1e400 * mbps\noutbound_nic_speed=10000.0 * mbps\ndisk",
         r"\[compute_node_2\] inbound_nic_speed: '1e400 \* mbps' is out of range"),
        ("in=source\nout=compute_node_17", "in=source\nout=sink", r"\[link_source_compute_node_17\]: a link from "
                                                                 r"'coordinator' to itself"),
        ("'compute_node_2', 'compute_node_3',", "'compute_node_2', 'compute_node_2',",
         r"\[ComputeNodes\] names: node 'compute_node_2' is listed twice"),
        ("kv_cache_capacity=3004416", "kv_cache_capacity=-5",
         r"\[compute_node_2\] kv_cache_capacity: must be >= 1 token, got -5"),
    ],
)
def test_simulator_cluster_ini_errors(tmp_path, old, new, message):
    path = edited(tmp_path, "simulator_cluster.ini", reference_dir() / "layouts/ilp/simulator_cluster.ini", old, new)
    with pytest.raises(ClusterSpecError, match=message):
        read_simulator_cluster_ini(path)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("vram_size = 40 * GB", "vram_size = 1e400 * GB", r"\[A100\] vram_size: '1e400 \* GB' is out of range"),
        ("[T4x4]", "[T4x4000]", r"\[T4x4000\]: GPU count 4000: must be at most 512"),
    ],
)
def test_machine_profile_errors(tmp_path, old, new, message):
    path = edited(tmp_path, "machine_profile.ini", reference_dir() / "machine_profile.ini", old, new)
    with pytest.raises(ClusterSpecError, match=message):
        read_machine_profile(path)


def cli(*args):
    """The `vllm-helix` command as users run it (as tests/test_cli.py does): a bad file is exit 2, one line."""
    proc = subprocess.run([sys.executable, "-m", "vllm_helix.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.parametrize("old, new, message", [
    ("[Link-0-1]\nbandwidth=1000 * mbps\nlatency=1 * MilliSec", "[Link-0-1]\nbandwidth=1000 * mbps\nlatency=-5 * Sec",
     r"\[Link-0-1\] latency: must be >= 0, got -5s"),
    ("[Link-0-1]\nbandwidth=1000 * mbps", "[Link-0-1]\nbandwidth=1e400", r"\[Link-0-1\] bandwidth: .*out of range"),
    ("[Link-0-1]", "[Link-0-0]", r"\[Link-0-0\]: a link from 'n0' to itself"),
])
def test_import_ini_and_plan_refuse_what_the_yaml_reader_would(tmp_path, old, new, message):
    """Before, both exited 0 and wrote a cluster (or plan) that `flow` (or `keys`) then rejected."""
    path = edited(tmp_path, "c.ini", SINGLE24, old, new)
    for args, out in ((["import-ini", path], "c.yaml"), (["plan", "--cluster", path, "--method", "petals"], "p.yaml")):
        proc = cli(*args, "-o", tmp_path / out)
        assert proc.returncode == 2, proc.stderr
        assert re.search(f"{re.escape(str(path))}: {message}", proc.stderr), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / out).exists()


def test_what_import_ini_writes_loads_as_yaml(tmp_path):
    assert cli("import-ini", SINGLE24, "-o", tmp_path / "c.yaml").returncode == 0
    assert load_cluster(tmp_path / "c.yaml") == read_cluster_ini(SINGLE24)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("compute_node_2=[7, 8, 9, 10]", "compute_node_2=[7, 9, 10]", r"compute_node_2: layers must be contiguous"),
        ("compute_node_2=[7, 8, 9, 10]", "compute_node_40=[7, 8, 9, 10]", r"compute_node_40: node id out of range"),
        ("compute_node_2=[7, 8, 9, 10]", "compute_node_2=[7, 8", r"compute_node_2: cannot read"),
        ("[Solution]", "[Answer]", r"\[Solution\]: missing section"),
        *[("compute_node_2=[7, 8, 9, 10]", f"compute_node_2={layers}",
           r"compute_node_2: expected a list of layer ids \(integers >= 0\), got " + re.escape(layers))
          for layers in ["[7.0, 8.0, 9.0, 10.0]", "['a', 'b']", "[[7], [8]]", "[False, True]", "[-1, 0, 1]",
                         "[7, None]"]],
        ("compute_node_3=[34", "compute_node_03=[]\ncompute_node_3=[34",
         r"compute_node_3: node id 3 is also given as compute_node_03"),
        ("offset=2", "offset=-5", r"\[Settings\] offset: must be >= 0"),
        ("offset=2", "offset=True", r"\[Settings\] offset: expected an integer"),
    ],
)
def test_solution_ini_errors(tmp_path, old, new, message):
    cluster = read_cluster_ini(SINGLE24)
    path = edited(tmp_path, "sol.ini", reference_dir() / "layouts/ilp/ilp_sol.ini", old, new)
    with pytest.raises(ClusterSpecError, match=message):
        read_solution_ini(path, cluster)
