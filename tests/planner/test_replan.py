"""Re-planning a changed cluster (`plan --previous`): few layer loads, reported against planning from scratch."""

import json
import subprocess
import sys

import pytest
import yaml

from vllm_helix.planner.cluster import cluster_from_dict
from vllm_helix.planner.flow import max_flow
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.planner.replan import layer_loads, replan

pytestmark = pytest.mark.solver

# 8 layers of 1 GB; an 8 GB node holds at most 4 (half its memory for weights): a replica needs two nodes
MODEL = ModelSpec("eight", num_layers=8, hidden_size=1024, layer_bytes=1e9, activation_bytes_per_token=2048)
OPTIONS = {"throughput": "estimate", "time_limit_s": 20, "threads": 1}


def cluster(names):
    return cluster_from_dict({
        "name": "pairs",
        "nodes": [{"name": n, "gpu": "A100", "vram": "8GB"} for n in names],
        "default_link": {"bandwidth": "10GB/s", "latency": "1ms"},
    })


TWO_PIPELINES = Placement({"a": LayerRange(0, 4), "b": LayerRange(4, 8), "c": LayerRange(0, 4), "d": LayerRange(4, 8)})


def test_layer_loads_count_layers_a_node_did_not_hold():
    moved = Placement({"a": LayerRange(0, 3), "b": LayerRange(3, 8), "e": LayerRange(4, 8)})
    assert layer_loads(TWO_PIPELINES, moved) == 0 + 1 + 4
    assert layer_loads(TWO_PIPELINES, TWO_PIPELINES) == 0


def test_a_replacement_node_takes_the_gone_nodes_layers():
    changed = cluster("abce")  # d gone, e (identical) added
    before = max_flow(cluster("abcd"), MODEL, TWO_PIPELINES, throughput="estimate").value
    result = replan(TWO_PIPELINES, changed, MODEL, **OPTIONS)
    # e taking d's [4, 8) costs 4 loads; a 4-stage pipeline of 2 layers each serves as much and costs 2
    assert result.plan.flow.value == pytest.approx(before)
    assert result.chosen.layer_loads <= 4 and result.chosen.layer_loads <= result.scratch_layer_loads
    assert result.plan.placement["e"] is not None
    assert result.plan.details["previous_layer_loads"] == {"chosen": result.chosen.layer_loads,
                                                           "from_scratch": result.scratch_layer_loads}


def test_tolerance_trades_max_flow_for_fewer_loads():
    changed = cluster("abc")  # d gone: c alone cannot hold a replica; a 3-stage pipeline beats a 2-stage one
    best = replan(TWO_PIPELINES, changed, MODEL, tolerance=0.0, **OPTIONS)
    as_is = max_flow(changed, MODEL, Placement({"a": LayerRange(0, 4), "b": LayerRange(4, 8)}),
                     throughput="estimate").value
    assert best.plan.flow.value == pytest.approx(4 / 3 * as_is, rel=1e-6)  # stages of 3, 3, 2 layers
    assert 0 < best.chosen.layer_loads <= 3  # the twins keep what they held: at most 3 new layers
    lenient = replan(TWO_PIPELINES, changed, MODEL, tolerance=0.3, **OPTIONS)
    assert lenient.chosen.layer_loads == 0 and lenient.plan.flow.value == pytest.approx(as_is)


def test_cli_reports_the_loads_and_writes_the_plan(tmp_path):
    (tmp_path / "before.yaml").write_text(yaml.safe_dump({
        "nodes": [{"name": n, "gpu": "A100", "vram": "40GB"} for n in "abcdef"],
        "default_link": {"bandwidth": "10GB/s", "latency": "1ms"}}))
    (tmp_path / "after.yaml").write_text(yaml.safe_dump({
        "nodes": [{"name": n, "gpu": "A100", "vram": "40GB"} for n in "abcdeg"],
        "default_link": {"bandwidth": "10GB/s", "latency": "1ms"}}))

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "vllm_helix.cli", "plan", "--model", "llama1-30b",
                               "--time-limit", "20", "--threads", "1", *map(str, args)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    cli("--cluster", tmp_path / "before.yaml", "-o", tmp_path / "plan.yaml")
    out = cli("--cluster", tmp_path / "after.yaml", "--previous", tmp_path / "plan.yaml", "-o", tmp_path / "new.yaml")
    assert "re-plan:" in out and "layer loads (from scratch:" in out
    plan = yaml.safe_load((tmp_path / "new.yaml").read_text())
    assert plan["details"]["previous_layer_loads"]["chosen"] <= plan["details"]["previous_layer_loads"]["from_scratch"]
    summary = json.loads(cli("--cluster", tmp_path / "after.yaml", "--previous", tmp_path / "plan.yaml",
                             "-o", tmp_path / "new.yaml", "--json"))
    assert summary["method"].startswith("replan")


def test_every_solver_run_ends_by_one_shared_deadline(monkeypatch):
    import time

    from vllm_helix.planner import milp

    budget, real, runs = 2.0, milp.solve_milp, []
    started = time.monotonic()

    def slow_solver(*args, time_limit_s, **kwargs):  # a solver that takes all the time it is given
        now = time.monotonic()
        assert now + time_limit_s <= started + budget + 0.05, "a run may outlast replan's time limit"
        runs.append(time_limit_s)
        time.sleep(time_limit_s)
        return real(*args, time_limit_s=5, **kwargs)

    monkeypatch.setattr(milp, "solve_milp", slow_solver)
    # b and d gone: [4, 8) is held by no one, so the bridges would follow "keep"
    result = replan(TWO_PIPELINES, cluster("ace"), MODEL, tolerance=0.0, **{**OPTIONS, "time_limit_s": budget})
    assert runs[0] <= budget / 2  # the from-scratch run leaves the pinned candidates time
    assert result.stopped_by == "time limit" and result.plan.details["replan_stopped_by"] == "time limit"
    assert "raise --time-limit" in result.summary()


def test_a_previous_plan_of_another_model_is_refused():
    from vllm_helix.errors import ClusterSpecError, InfeasiblePlacement
    from vllm_helix.planner.replan import check_previous_model

    other = ModelSpec("six", num_layers=6, hidden_size=1024, layer_bytes=1e9, activation_bytes_per_token=2048)
    with pytest.raises(ClusterSpecError, match=r"p.yaml: a plan for model 'six' \(6 layers\), not for 'eight'"):
        check_previous_model(other, MODEL, "p.yaml")
    check_previous_model(MODEL, MODEL, "p.yaml")
    with pytest.raises(InfeasiblePlacement, match="placement of another model"):
        replan(TWO_PIPELINES, cluster("abcd"), other, **OPTIONS)
