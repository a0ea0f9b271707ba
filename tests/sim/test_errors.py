"""Bad input gives HelixError subclasses with a clear message, never a bare traceback."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest

from vllm_helix.errors import ClusterSpecError, HelixError
from vllm_helix.planner.cluster import ClusterSpec, save_cluster
from vllm_helix.planner.plan import save_plan
from vllm_helix.sim import workload
from vllm_helix.sim.run import SimConfig, simulate
from vllm_helix.sim.workload import Arrival, generate_trace


def test_plan_for_another_cluster_is_rejected(one_node):
    other = ClusterSpec(tuple(dataclasses.replace(n, name="zz") for n in one_node.cluster.nodes), ())
    with pytest.raises(ClusterSpecError, match="does not have"):
        simulate(one_node, SimConfig(mode="online", trace=()), cluster=other)


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "sideways"}, "mode must be"),
    ({"scheduler": "magic"}, "scheduler must be"),
    ({"duration_s": -1}, "duration_s must be >= 1"),
    ({"duration_s": 1e-9}, "duration_s must be >= 1"),
    ({"duration_s": math.inf}, r"duration_s must be a finite number, got inf \(--duration\)"),
    ({"duration_s": math.nan}, "duration_s must be a finite number"),
    ({"duration_s": 1e12}, r"duration_s must be at most 86400 s \(one simulated day\)"),
    ({"warmup_s": -1}, "warmup_s must be >= 0"),
    ({"warmup_s": math.inf}, "warmup_s must be a finite number"),
    ({"token_rate": math.inf}, r"token_rate must be a finite number, got inf \(--rate\)"),
    ({"token_rate": 0}, "token_rate must be > 0"),
    ({"initial_queries": 0}, "initial_queries must be > 0"),
    ({"initial_queries": 100_000_000}, "initial_queries must be at most 100000 requests per run"),
    ({"initial_queries": True}, "initial_queries must be an integer"),
    ({"initial_queries": 2.5}, "initial_queries must be an integer"),
    ({"sample_interval_s": 1e-9}, "sample_interval_s must be >= 0.01"),
    ({"max_time_s": math.inf}, "max_time_s must be a finite number"),
    ({"disk_bytes_per_s": 0}, "disk_bytes_per_s must be > 0"),
    ({"feed_hwm": math.nan}, "feed_hwm must be a finite number"),
    ({"seed": "x"}, "seed must be an integer"),
])
def test_bad_config_is_rejected(kwargs, message):
    with pytest.raises(HelixError, match=message):
        SimConfig(**kwargs)


def test_bad_trace_file_is_rejected(one_node, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("arrival_time_s,input_tokens,output_tokens\n-1,5,5\n")
    with pytest.raises(ClusterSpecError, match="bad.csv:2"):
        simulate(one_node, SimConfig(mode="online", trace=str(path)))


def test_a_rate_that_would_generate_too_many_requests_is_refused_before_generating():
    with pytest.raises(ClusterSpecError, match=r"about 3\.\d+e\+09 requests; a run takes at most 100000"):
        generate_trace(1e12, 3)
    with pytest.raises(ClusterSpecError, match="token rate must be > 0 and finite"):
        generate_trace(math.inf, 3)


def _trace_file(tmp_path, *rows: str):
    path = tmp_path / "t.csv"
    path.write_text("arrival_time_s,input_tokens,output_tokens\n" + "".join(f"{r}\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("row, message", [
    ("0,100000000,5", r"t.csv:3: input_tokens 100000000: no route takes a prompt that long \(at most \d+\)"),
    ("0,100,50000000", r"t.csv:3: input \+ output tokens 50000100: more than the KV cache of any route can ever "
                       r"hold \(at most \d+\)"),
    ("1e300,100,50", r"t.csv:3: arrives at 1e\+300 s, after the simulation ends"),
])
def test_a_trace_request_the_plan_can_never_serve_is_an_error_naming_its_row(one_node, tmp_path, row, message):
    trace = _trace_file(tmp_path, "0,10,2", row)
    with pytest.raises(ClusterSpecError, match=message):
        simulate(one_node, SimConfig(mode="online", trace=trace))


def test_the_longest_request_a_route_takes_is_accepted(one_node, tmp_path):
    """The bound is the route's KV: one token under it runs (and finishes), one token over it is refused."""
    from vllm_helix.sim.run import _request_check

    kv = {"a": 4 * 1000}  # 1000 tokens on the one node's 4 layers
    check = _request_check(one_node, kv, 1e6)
    assert check(Arrival(0, 10, 990)) is None
    assert "at most 1000" in check(Arrival(0, 10, 991))


def test_a_trace_of_arrivals_is_checked_too(one_node):
    with pytest.raises(ClusterSpecError, match=r"trace\[1\]: input_tokens 100000000"):
        simulate(one_node, SimConfig(mode="online", trace=(Arrival(0, 5, 5), Arrival(1, 100_000_000, 5))))


def test_a_trace_longer_than_a_run_takes_is_refused(one_node, tmp_path, monkeypatch):
    monkeypatch.setattr(workload, "MAX_REQUESTS", 2)
    with pytest.raises(ClusterSpecError, match="3 requests; a run takes at most 2"):
        simulate(one_node, SimConfig(mode="online", trace=_trace_file(tmp_path, "0,5,5", "1,5,5", "2,5,5")))


# ------------------------------------------------------------------ the CLI: one line, exit 2, no traceback

@pytest.fixture
def files(one_node, tmp_path):
    save_cluster(one_node.cluster, tmp_path / "cluster.yaml")
    save_plan(one_node, tmp_path / "plan.yaml")
    return ["--cluster", tmp_path / "cluster.yaml", "--plan", tmp_path / "plan.yaml"]


@pytest.mark.parametrize("extra, message", [
    (["--duration", "inf"], "duration_s must be a finite number, got inf (--duration)"),
    (["--duration", "1e-9"], "duration_s must be >= 1"),
    (["--initial-queries", "100000000"], "initial_queries must be at most 100000"),
    (["--mode", "online", "--rate", "inf"], "token_rate must be a finite number"),
    (["--mode", "online", "--rate", "1e12", "--duration", "3"], "a run takes at most 100000"),
    (["--mode", "online", "--trace", "nan.csv"], "nan.csv:2: arrival_time_s: need a finite arrival time >= 0 s"),
    (["--mode", "online", "--trace", "big.csv"], "big.csv:2: input_tokens 10000000: no route takes a prompt"),
    (["--mode", "online", "--trace", "bin.csv"], "bin.csv: cannot read trace: not UTF-8 text"),
])
def test_simulate_refuses_nonsense_in_one_line(files, tmp_path, extra, message):
    header = "arrival_time_s,input_tokens,output_tokens\n"
    (tmp_path / "nan.csv").write_text(header + "nan,100,50\n")
    (tmp_path / "big.csv").write_text(header + "0,10000000,5\n")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x01" + header.encode())
    extra = [str(tmp_path / x) if x.endswith(".csv") else x for x in extra]
    proc = subprocess.run([sys.executable, "-m", "vllm_helix.cli", "simulate", *map(str, files), *extra],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
