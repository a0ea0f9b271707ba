"""`vllm-helix discover --hosts`: probes started with `vllm-helix worker --probe`, links measured over the transport.

On network-namespace hosts with netem links (tests/netns_hosts.py) the measured bandwidth and latency of every
directed link are within 20 % of what netem was set to; on loopback, the cluster file feeds `vllm-helix plan`;
bad hosts are one-line errors (exit 2) that name the host, within the probe timeout."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from netns_hosts import NEEDS_ROOT

from vllm_helix.coordinator.local_nodes import free_port
from vllm_helix.planner.files import load_cluster

CLI = [sys.executable, "-m", "vllm_helix.cli"]


@contextlib.contextmanager
def probes(binds: list[tuple[str, list[str]]]):
    """`vllm-helix worker --probe` at each (address, command prefix); waits until each listens."""
    started = []
    try:
        for (address, prefix), i in zip(binds, range(len(binds)), strict=True):
            started.append(subprocess.Popen([*prefix, *CLI, "worker", "--probe", "--bind", address,
                                             "--node", f"h{i + 1}"], stderr=subprocess.PIPE, text=True))
            line = started[-1].stderr.readline()
            assert "listening on" in line, line
        yield
    finally:
        for process in started:
            process.terminate()
            process.wait(10)


def discover(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "discover", *args], capture_output=True, text=True, timeout=timeout)


def test_discovered_loopback_cluster_feeds_the_planner(tmp_path, tiny_llama_path):
    hosts = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    with probes([(h, []) for h in hosts]):
        done = discover("--hosts", ",".join(hosts), "-o", str(tmp_path / "cluster.yaml"))
    assert done.returncode == 0, done.stderr
    cluster = load_cluster(tmp_path / "cluster.yaml")
    assert [(n.name, n.gpu, n.address) for n in cluster.nodes] == [("h1", "cpu", hosts[0]), ("h2", "cpu", hosts[1])]
    assert all(n.vram_bytes > 1e9 for n in cluster.nodes)  # this host's memory
    assert len(cluster.links) == 6  # every directed pair of coordinator, h1, h2
    assert all(lk.bandwidth_bytes_per_s > 1e7 and 0 < lk.latency_s < 0.05 for lk in cluster.links)
    planned = subprocess.run([*CLI, "plan", "--cluster", str(tmp_path / "cluster.yaml"), "--model",
                              str(tiny_llama_path), "--throughput", "estimate", "--method", "milp", "--time-limit",
                              "20", "-o", str(tmp_path / "plan.yaml")], capture_output=True, text=True, timeout=120)
    assert planned.returncode == 0, planned.stderr
    assert yaml.safe_load((tmp_path / "plan.yaml").read_text())["nodes"]


@pytest.mark.parametrize("hosts, error", [
    ("127.0.0.1", "is not HOST:PORT"),
    ("no-such-host.invalid:7000", "host no-such-host.invalid:7000: cannot resolve"),
])
def test_malformed_or_unknown_hosts_are_one_line_errors(tmp_path, hosts, error):
    done = discover("--hosts", hosts, "-o", str(tmp_path / "c.yaml"))
    assert done.returncode == 2 and error in done.stderr
    assert "Traceback" not in done.stderr


def test_a_host_without_a_probe_is_named_not_waited_for(tmp_path):
    live, dead = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with probes([(live, [])]):
        done = discover("--hosts", f"{live},{dead}", "--timeout", "3", "-o", str(tmp_path / "c.yaml"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: host {dead}: no probe answered within 3 s")
    assert len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 60
    assert not Path(tmp_path / "c.yaml").exists()


SHAPES = [("200mbit", 2.0), ("100mbit", 5.0), ("50mbit", 10.0)]  # (rate, one-way delay) of each host's link


def needs_root(test):
    for mark in NEEDS_ROOT:
        test = mark(test)
    return test


@pytest.mark.slow
@needs_root
def test_discover_measures_netem_links_within_20_percent(make_host, tmp_path):
    """Host i hangs off the root namespace (the coordinator) by a link of rate r_i and delay d_i each way: host i to
    host j crosses both links (min rate, d_i + d_j), the coordinator to host i one. On a kernel without netem the
    links are rate-limited only (tbf) and the latency check is that discover adds none (under 5 ms on a loaded
    machine)."""
    hosts = [make_host(rate, delay) for rate, delay in SHAPES]
    with probes([(f"{h.address}:7100", h.command()) for h in hosts]):
        done = discover("--hosts", ",".join(f"{h.address}:7100" for h in hosts), "-o", str(tmp_path / "c.yaml"))
    assert done.returncode == 0, done.stderr
    cluster = load_cluster(tmp_path / "c.yaml")
    rate = {"coordinator": float("inf")} | {f"h{i + 1}": float(r.removesuffix("mbit")) * 1e6 / 8
                                            for i, (r, _) in enumerate(SHAPES)}
    # a kernel without sch_netem shapes the rate only (tbf): then the links add no delay of their own
    netem = all(h.shaping.startswith("netem") for h in hosts)
    delay = {"coordinator": 0.0} | {f"h{i + 1}": d / 1e3 if netem else 0.0 for i, (_, d) in enumerate(SHAPES)}
    off = []
    for link in cluster.links:
        want_bw = min(rate[link.src], rate[link.dst])
        want_lat = delay[link.src] + delay[link.dst]
        if abs(link.bandwidth_bytes_per_s - want_bw) > 0.2 * want_bw:
            off.append(f"{link.src}->{link.dst} bandwidth {link.bandwidth_bytes_per_s:.4g} B/s "
                       f"(set {want_bw:.4g})")
        if abs(link.latency_s - want_lat) > (0.2 * want_lat if netem else 0.005):
            off.append(f"{link.src}->{link.dst} latency {link.latency_s:.4g} s (set {want_lat:.4g})")
    assert len(cluster.links) == 12
    assert not off, "\n".join(off) + "\n" + done.stderr


@pytest.mark.parametrize("args, error", [
    (["--node", "a"], "required: --plan, --model (or --probe)"),
    (["--probe"], "--probe needs --bind HOST:PORT"),
    (["--probe", "--bind", "0.0.0.0:7000"], "not a wildcard"),
])
def test_worker_probe_usage_errors(args, error):
    done = subprocess.run([*CLI, "worker", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and error in done.stderr and "Traceback" not in done.stderr


def test_discover_ray_without_a_ray_cluster_is_one_line(tmp_path):
    pytest.importorskip("ray", reason="the Ray extra")
    done = subprocess.run([*CLI, "discover", "--ray", "-o", str(tmp_path / "c.yaml")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "RAY_ADDRESS": f"127.0.0.1:{free_port()}"})
    assert done.returncode == 2 and done.stderr.startswith("error: cannot reach the Ray cluster at ")
    assert len(done.stderr.strip().splitlines()) == 1
