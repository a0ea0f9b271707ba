"""The coordinator's metrics and plan-vs-real checks without an engine: node reports in, a real Prometheus
endpoint (prometheus_client's HTTP server over a multiprocess collector of the values folder, as vLLM's
/metrics with several API servers) out, read by `vllm-helix status`.
(The same through `vllm serve`, with a CPU-capped node: tests/serving/test_observe.py.)"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from vllm_helix import wire as p
from vllm_helix.cli import main
from vllm_helix.coordinator import drift
from vllm_helix.coordinator.drift import Expectation, NodeDrift, Work
from vllm_helix.coordinator.local_nodes import free_port
from vllm_helix.coordinator.metrics import ClusterMetrics, forget_dead_processes
from vllm_helix.coordinator.routing import PROBE_STEP
from vllm_helix.planner.files import load_cluster, load_placement
from vllm_helix.planner.model import model_from_hf_config
from vllm_helix.planner.plan import evaluate_plan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "planner"))
from test_measured_profiles import TINY_CONFIG, synthetic_profile  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plan(monkeypatch):
    """The local3 chain of the tiny model, planned on a measured CPU profile."""
    from vllm_helix.planner import profiles

    monkeypatch.setattr(profiles, "_MEASURED", {})
    profiles.register_measured(synthetic_profile("tiny", "cpu"), "synthetic")
    cluster = load_cluster(ROOT / "examples/local3-cluster.yaml")
    model = model_from_hf_config(TINY_CONFIG, name="tiny")
    placement = load_placement(ROOT / "examples/local3-placement.yaml", cluster)
    return evaluate_plan(cluster, model, placement, "fixed", throughput="auto")


def busy(node, work: Work, **extra) -> p.Busy:
    return p.Busy(node, work.busy_s, work.batches, work.tokens, idle=False, decode_seqs=work.decode_seqs, **extra)


def test_a_node_as_fast_as_its_profile_is_on_plan_and_a_slow_one_warns_after_the_hold(plan, monkeypatch, caplog):
    monkeypatch.setattr(drift, "HOLD_S", 5.0)
    expect = Expectation(plan, "node-b")
    batch = Work(0.0, 1, 8, 8)  # one decode step of 8 sequences
    per_batch = expect.seconds(batch)
    assert per_batch == pytest.approx(2e-3 + 3 * 8 * 5e-5)  # overhead + 3 layers of 8 decodes at 50 us each

    def run(node: NodeDrift, slowdown: float, seconds: int, start: int = 0, work: Work | None = None) -> Work:
        work = work or Work()
        for t in range(start, start + seconds):  # a report per second, 100 batches in it
            work = Work(work.busy_s + 100 * per_batch * slowdown, work.batches + 100, work.tokens + 800,
                        work.decode_seqs + 800)
            node.update(float(t), work)
        return work

    on_plan = NodeDrift(plan, "node-b", "plan.yaml", "/models/tiny")
    with caplog.at_level(logging.INFO, logger="vllm_helix.drift"):
        run(on_plan, 1.1, 30)
    assert on_plan.ratio == pytest.approx(1 / 1.1) and not on_plan.drifting and not caplog.records

    slow = NodeDrift(plan, "node-b", "plan.yaml", "/models/tiny")
    with caplog.at_level(logging.INFO, logger="vllm_helix.drift"):
        work = run(slow, 2.0, 5)
        assert not slow.drifting  # off, but not for HOLD_S yet
        work = run(slow, 2.0, 3, start=5, work=work)
        assert slow.drifting and slow.ratio == pytest.approx(0.5)
        [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "node node-b runs at 50 %" in warning and "vllm-helix profile --model /models/tiny --gpu cpu" in warning
        assert "--previous plan.yaml" in warning
        run(slow, 1.0, 15, start=8, work=work)  # back to speed: the window forgets the slow seconds
    assert not slow.drifting and "back within" in caplog.records[-1].getMessage()


@contextlib.contextmanager
def prometheus_endpoint(registry):
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join()


def test_metrics_reach_a_prometheus_endpoint_and_status_prints_them(plan, tmp_path, capsys):
    metrics = ClusterMetrics(plan, "plan.yaml", "/models/tiny", folder=str(tmp_path))
    for node in ("node-a", "node-b", "node-c"):
        metrics.on_busy(busy(node, Work(1.0, 10, 100, 80), kv_used_blocks=3, kv_total_blocks=40, bytes_sent=5,
                             bytes_received=7), now=100.0)
        metrics.on_busy(busy(node, Work(1.5 if node == "node-b" else 1.1, 20, 200, 160), kv_used_blocks=5,
                             kv_total_blocks=40, bytes_sent=9, bytes_received=11), now=101.0)
    metrics.on_admit("r1", ["node-a", "node-b", "node-c"])
    metrics.on_wait("r2")
    metrics.on_wait("r2")  # one request waiting over several steps counts once
    metrics.on_failed(2)
    metrics.set_routing(plan.flow.value, {"node-b": 0.5})  # re-weighed: node-b measured at half the median
    metrics.on_calibration("node-c", p.Calibration(128, 0.5, 8, 16, 0.05))
    metrics.publish()  # the receive loop's tick does this every second
    assert [p.name for p in tmp_path.iterdir()] == [f"gauge_livemostrecent_{os.getpid()}.db"]

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    speeds = {s.labels["node"]: s.value for f in registry.collect() if f.name == "helix_node_routing_speed"
              for s in f.samples}
    assert speeds == {"node-a": 1.0, "node-b": 0.5, "node-c": 1.0}
    with prometheus_endpoint(registry) as url:
        assert main(["status", "--url", url]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("node-")}
    assert "[2, 5)" in rows["node-b"] and "5/40" in rows["node-b"] and "yes" in rows["node-b"]
    assert "bottleneck (busiest live node): node-b (50% busy)" in out  # the busiest in the last interval
    assert "100.0" in rows["node-a"]  # tokens/s over that second
    assert rows["node-b"].split()[-2:] == ["-", "0.50"] and rows["node-c"].split()[-1] == "1.00"  # probe, speed
    assert rows["node-c"].split()[-2].endswith("%")  # its start-up probe's ratio
    assert "1 admitted, 0 rerouted, 2 failed, 1 waited for KV room" in out
    assert "route node-a -> node-b -> node-c: 1" in out
    assert f"planned {plan.flow.value:.1f} tokens/s, live {plan.flow.value:.1f}" in out
    metrics.close()
    assert not list(tmp_path.iterdir())  # a closed engine core's values are gone


def test_status_of_a_server_without_helix_metrics_is_a_one_line_error(capsys):
    with prometheus_endpoint(CollectorRegistry()) as url:  # a Prometheus endpoint with nothing of ours
        assert main(["status", "--url", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no helix_ metrics" in err
    assert main(["status", "--url", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "cannot read" in capsys.readouterr().err



def test_status_of_a_url_http_cannot_use_or_a_peer_that_cuts_its_answer_short_is_a_one_line_error(capsys):
    assert main(["status", "--url", "http://a b"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot read http://a b/metrics: ")
    with socket.create_server(("127.0.0.1", 0)) as server:
        def answer_short() -> None:
            peer, _ = server.accept()
            with peer:
                peer.recv(4096)
                peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhelix")

        threading.Thread(target=answer_short, daemon=True).start()
        assert main(["status", "--url", f"http://127.0.0.1:{server.getsockname()[1]}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot read" in err and "IncompleteRead" in err

def test_the_values_of_an_engine_core_that_died_are_not_exported(plan, tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid is free now: an engine core killed before it could remove its value file
    stale = ClusterMetrics(plan, "plan.yaml", "/models/tiny", folder=str(tmp_path))
    stale.on_busy(busy("node-a", Work(1.0, 10, 100, 80), kv_used_blocks=3, kv_total_blocks=40), now=100.0)
    mine, stale_file = (tmp_path / f"gauge_livemostrecent_{pid}.db" for pid in (os.getpid(), gone.pid))
    mine.rename(stale_file)
    live = ClusterMetrics(plan, "plan.yaml", "/models/tiny", folder=str(tmp_path))
    live.publish()
    forget_dead_processes(str(tmp_path))  # what expose() does with the folder it is given
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [mine.name] and not stale_file.exists()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    used = [s.value for f in registry.collect() if f.name == "helix_node_kv_blocks_used" for s in f.samples]
    assert used == [0.0, 0.0, 0.0]  # the live core's three nodes only


@pytest.mark.parametrize("raw", ["fast", "-1", "nan", "1e9"])
def test_a_bad_drift_knob_in_the_environment_is_named_and_ignored(raw, monkeypatch, caplog):
    monkeypatch.setenv("HELIX_DRIFT_TOLERANCE", raw)
    with caplog.at_level(logging.WARNING, logger="vllm_helix.drift"):
        assert drift.env_number("HELIX_DRIFT_TOLERANCE", 0.25, 0.0, 10.0) == 0.25
    assert f"HELIX_DRIFT_TOLERANCE={raw!r} is not a number in [0, 10]: using 0.25" in caplog.text


def test_a_good_drift_knob_is_taken(monkeypatch):
    monkeypatch.setenv("HELIX_DRIFT_TOLERANCE", "0.75")
    assert drift.env_number("HELIX_DRIFT_TOLERANCE", 0.25, 0.0, 10.0) == 0.75


def test_an_estimated_plan_expects_the_planners_roofline_per_batch_and_the_routes_do_not_follow_it():
    """No profile: a decode batch costs the weights' read whatever its few sequences, a long prefill its compute
    (a flat tokens/s would call a node serving small batches slow)."""
    from coordinator.test_serving_parts import _route_book

    plan = _route_book({"head": 4096, "x": 4096, "y": 4096}).plan  # an estimate plan of CPU nodes
    expect = Expectation(plan, "x")
    one, eight = expect.seconds(Work(0.0, 1, 1, 1)), expect.seconds(Work(0.0, 1, 8, 8))
    assert one == eight > 0  # bandwidth-bound: the same read of two layers' weights
    long, longer = expect.seconds(Work(0.0, 1, 10_000, 0)), expect.seconds(Work(0.0, 1, 20_000, 0))
    assert longer == pytest.approx(2 * long) and long > 10 * one  # compute-bound
    assert expect.seconds(Work(0.0, 2, 16, 16)) == pytest.approx(2 * eight)  # the mean batch, per batch
    node = NodeDrift(plan, "x", "plan.yaml", "/models/m")
    node.update(1.0, Work(1.0, 10, 80, 80))
    assert node.ratio is not None and node.routing_ratio(1.0) is None  # warns, but the routes do not follow it


def test_the_start_up_probe_sets_each_nodes_speed_before_serving_and_prices_its_batches_without_a_profile():
    """Two nodes the estimate plans alike; x's probe ran twice as fast as y's. Before any request the routes
    follow that; while serving, each window is priced by the node's own probe line (per batch + per token) and
    scaled by its probe's ratio; unmeasured for HOLD_S, a node falls back to its probe's ratio."""
    from coordinator.test_serving_parts import _route_book

    book = _route_book({"head": 4096, "x": 4096, "y": 4096})
    metrics = ClusterMetrics(book.plan, "plan.yaml", "/models/m", follow_probes=True)  # --helix-follow-probes
    fast = p.Calibration(prefill_tokens=128, prefill_s=0.128, decode_seqs=8, decode_context=16, decode_s=0.012)
    slow = p.Calibration(128, 0.256, 8, 16, 0.024)
    metrics.on_calibration("x", fast)
    metrics.on_calibration("y", slow)
    metrics.on_calibration("head", None)  # a node without a probe keeps the plan's weights
    ratios = metrics.routing_ratios(0.0)
    assert set(ratios) == {"x", "y"} and ratios["x"] == pytest.approx(2 * ratios["y"])
    metrics.follow_probes = False  # the default: the probes are logged and exported only
    assert metrics.routing_ratios(0.0) == {}
    metrics.follow_probes = True
    assert book.follow_speeds(ratios, 0.0, PROBE_STEP) and book.speed["x"] == pytest.approx(2 * book.speed["y"])
    # probes within the noise of a shared host (20 % apart) leave the plan's weights
    assert not _route_book({"head": 4096, "x": 4096, "y": 4096}).follow_speeds({"x": 1.2, "y": 1.0}, 0.0, PROBE_STEP)

    x = metrics.drift["x"]
    assert x.own is not None
    assert (x.own.per_token, x.own.per_batch) == (pytest.approx(0.116 / 120), pytest.approx(0.012 - 8 * 0.116 / 120))
    decodes = Work(0.0, 100, 1600, 1600)  # 100 decode steps of 16: a mix the probe never ran
    priced = x.own.seconds(decodes)
    x.update(1.0, Work(priced, 100, 1600, 1600))  # as fast as its probe
    assert x.ratio == pytest.approx(x.calibrated)
    x.update(2.0, Work(3 * priced, 200, 3200, 3200))  # the whole window now at half its probe's speed
    assert x.ratio == pytest.approx(x.calibrated * 2 / 3)
    assert x.routing_ratio(2.0 + drift.HOLD_S, probes=True) == x.ratio
    assert x.routing_ratio(3.0 + drift.HOLD_S, probes=True) == x.calibrated
    metrics.on_node_lost("x")  # restarted: its old probe says nothing until its next Hello
    assert "x" not in metrics.routing_ratios(10.0)
    metrics.on_calibration("x", p.Calibration(128, 0.0, 8, 16, 0.012))  # a broken probe is ignored
    assert "x" not in metrics.routing_ratios(10.0)


def test_a_probe_as_fast_as_the_profile_is_on_plan(plan):
    """With a profile the probe's ratio is the profile's price of its batches over their measured time."""
    node = NodeDrift(plan, "node-b", "plan.yaml", "/models/tiny")
    expect = node.expect
    prefill, decode = expect.seconds(Work(0.0, 1, 128, 0)), expect.seconds(Work(0.0, 1, 8, 8), context=16)
    node.calibrate(p.Calibration(128, prefill, 8, 16, decode))
    assert node.calibrated == pytest.approx(1.0) and node.routing_ratio(0.0, probes=True) == pytest.approx(1.0)
    assert node.routing_ratio(0.0) is None  # not measured while serving yet; the probe only with the option
    node.calibrate(p.Calibration(128, 1.25 * prefill, 8, 16, 1.25 * decode))
    assert node.calibrated == pytest.approx(0.8)


def test_a_node_given_little_work_is_measured_over_a_longer_window(plan):
    """A node measured slow gets few requests; it must still be measured again, not judged by its old speed."""
    per_batch = Expectation(plan, "node-b").seconds(Work(0.0, 1, 8, 8))
    node, work = NodeDrift(plan, "node-b", "plan.yaml", "/models/tiny"), Work()

    def run(seconds: range, batches: int, slowdown: float) -> None:
        nonlocal work
        for t in seconds:
            work = Work(work.busy_s + batches * per_batch * slowdown, work.batches + batches,
                        work.tokens + 8 * batches, work.decode_seqs + 8 * batches)
            node.update(float(t), work)

    run(range(0, 20), 100, 2.0)
    assert node.ratio == pytest.approx(0.5)
    run(range(20, 80), 10, 1.0)  # at speed, 32 ms of compute a second: 10 s hold too little to judge
    assert node.ratio == pytest.approx(1.0)
    # no work at all (weighed out of routing): the speed the routes follow is forgotten after HOLD_S
    assert node.routing_ratio(79.0 + drift.HOLD_S) == node.ratio and node.routing_ratio(80.0 + drift.HOLD_S) is None
    node.update(80.0, Work(0.1, 10, 80, 80))  # a new process: its counters start again
    assert [w for _, w in node.history] == [Work(), Work(0.1, 10, 80, 80)]
