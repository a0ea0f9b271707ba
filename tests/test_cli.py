"""The `vllm-helix` command as users run it: numbers out, files written, bad input -> one error line."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from vllm_helix.planner.examples import reference_dir

REF = reference_dir()
SINGLE24 = str(REF / "single24.ini")


def run(*args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "vllm_helix.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("method, expected", [("ilp", 1289.556), ("petals", 952.107), ("swarm", 757.853),
                                              ("homogeneous", 531.703)])
def test_flow_reproduces_reference_numbers(method, expected):
    args = ["flow", "--cluster", SINGLE24, "--placement", REF / f"layouts/{method}/{method}_sol.ini", "--json"]
    if method == "petals":
        args.append("--partial-inference")
    out = json.loads(run(*args).stdout)
    assert out["max_flow_tokens_per_s"] == pytest.approx(expected, rel=1e-4)
    assert out["upper_bound_tokens_per_s"] == pytest.approx(2803.861, rel=1e-4)
    assert out["min_cut"]


def test_flow_table_and_plot(tmp_path):
    out = run("flow", "--cluster", SINGLE24, "--placement", REF / "layouts/ilp/ilp_sol.ini",
              "--plot", tmp_path / "p.png").stdout
    assert "max flow:" in out and "1289.556" in out and "2803.861" in out and "min cut" in out
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_plan_and_flow_tables_show_each_nodes_tensor_parallel_degree(tmp_path):
    cluster, placement = tmp_path / "c.yaml", tmp_path / "p.yaml"
    cluster.write_text("nodes:\n  - {name: a, gpu: L4, gpus: 2, vram: 48GB}\n  - {name: b, gpu: L4, vram: 24GB}\n"
                       "  - {name: c, gpu: T4, gpus: 4, tp: 2, vram: 64GB}\n"
                       "default_link: {bandwidth: 10Gbps, latency: 1ms}\n")
    placement.write_text("c: [0, 30]\na: [30, 50]\nb: [50, 60]\n")
    base = ["--cluster", cluster, "--model", "llama1-30b"]
    tables = [run("flow", *base, "--placement", placement).stdout,
              run("plan", *base, "--objective", "max-flow", "-o", tmp_path / "plan.yaml").stdout]
    for out in tables:
        rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines() if line[:2] in ("a ", "b ", "c ")}
        assert "tp" in next(line for line in out.splitlines() if line.startswith("node")).split()
        assert rows == {"a": ["L4x2", "2"], "b": ["L4", "1"], "c": ["T4x4", "2"]}
    nodes = json.loads(run("flow", *base, "--placement", placement, "--json").stdout)["nodes"]
    assert {n["name"]: n["tensor_parallel_size"] for n in nodes} == {"a": 2, "b": 1, "c": 2}


def test_milp_plan_prints_and_stores_the_lowest_bound_and_its_kind(tmp_path):
    plan = tmp_path / "plan.yaml"
    out = run("plan", "--cluster", REF / "3cluster24.ini", "--method", "milp", "--threads", "1", "--work-limit", "1",
              "--time-limit", "10", "-o", plan).stdout
    line = next(line for line in out.splitlines() if line.startswith("upper bound on any placement's max flow"))
    assert "1754.382 tokens/s" in line and "; network (" in line  # below the compute bound 2045.6
    details = yaml.safe_load(plan.read_text())["details"]
    assert details["bound_kind"].startswith("network") and details["bound_tokens_per_s"] == pytest.approx(1754.382)
    assert details["bounds_tokens_per_s"]["compute"] == pytest.approx(2045.641)


def test_plan_writes_a_plan_that_flow_reads_back(tmp_path):
    plan = tmp_path / "plan.yaml"
    run("plan", "--cluster", SINGLE24, "--method", "swarm", "-o", plan)
    data = yaml.safe_load(plan.read_text())
    assert data["max_flow_tokens_per_s"] == pytest.approx(757.853, rel=1e-4)
    assert len(data["nodes"]) == 24 and data["arcs"] and data["cluster"]["nodes"][0]["address"] == "local"
    out = json.loads(run("flow", "--cluster", SINGLE24, "--placement", plan, "--json").stdout)
    assert out["max_flow_tokens_per_s"] == pytest.approx(757.853, rel=1e-4)


def test_import_ini_gives_an_equivalent_yaml_cluster(tmp_path):
    out = tmp_path / "single24.yaml"
    run("import-ini", SINGLE24, "-o", out)
    flow = json.loads(run("flow", "--cluster", out, "--placement", REF / "layouts/ilp/ilp_sol.ini",
                          "--json").stdout)
    assert flow["max_flow_tokens_per_s"] == pytest.approx(1289.556, rel=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["flow", "--cluster", "missing.yaml", "--placement", "x.ini"], "cannot read file"),
        (["flow", "--cluster", SINGLE24, "--placement", "missing.yaml"], "cannot read placement"),
        (["flow", "--cluster", SINGLE24, "--placement", REF / "layouts/ilp/ilp_sol.ini", "--model", "gpt-9"],
         "not a built-in"),
        (["plan", "--cluster", REF / "machine_profile.ini", "--method", "swarm", "-o", "x.yaml"],
         "missing section"),
        (["import-ini", REF / "layouts/ilp/ilp_sol.ini", "-o", "x.yaml"], "[NodeNames]: missing section"),
        (["plan", "--cluster", SINGLE24, "-o", "x.yaml", "--objective", "latency"], "need --rate"),
        (["plan", "--cluster", SINGLE24, "-o", "x.yaml", "--slo", "2"], "need --rate"),
        (["plan", "--cluster", SINGLE24, "-o", "x.yaml", "--sim-window", "0"], "window must be > 0"),
        (["plan", "--cluster", SINGLE24, "-o", "x.yaml", "--sim-window", "inf", "--time-limit", "3"],
         "window must be > 0 and at most 86400 s (--sim-window), got inf"),
        (["plan", "--cluster", SINGLE24, "-o", "x.yaml", "--sim-window", "1e7", "--time-limit", "3"],
         "window must be > 0 and at most 86400 s (--sim-window)"),
        (["plan", "--cluster", SINGLE24, "-o", "x.yaml", "--rate", "inf", "--objective", "latency"],
         "rate must be > 0 and at most 1e+07 tokens/s (--rate), got inf"),
        (["plan", "--cluster", SINGLE24, "-o", "x.yaml", "--method", "milp", "--work-limit", "-1"],
         "work limit must be > 0"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(args, message):
    proc = run(*args, ok=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr


def test_plan_previous_of_another_model_is_one_clear_line_and_exit_2(tmp_path):
    other = tmp_path / "llama1-30b.yaml"
    run("plan", "--cluster", SINGLE24, "--model", "llama1-30b", "--method", "swarm", "-o", other)
    proc = run("plan", "--cluster", SINGLE24, "--previous", other, "--time-limit", "10", "-o", tmp_path / "x.yaml",
               ok=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith(f"error: --previous {other}: a plan for model 'llama1-30b' (60 layers), "
                                  "not for 'llama2-70b' (80 layers)")


def test_plan_chooses_by_simulation_and_records_every_candidate(tmp_path):
    plan = tmp_path / "plan.yaml"
    proc = run("plan", "--cluster", SINGLE24, "-o", plan, "--time-limit", "1", "--sim-window", "10")
    assert "candidate" in proc.stdout and "reproduce" in proc.stdout and "Ctrl-C keeps the best" in proc.stderr
    details = yaml.safe_load(plan.read_text())["details"]
    assert details["objective"] == "throughput" and details["search_stopped_by"] == "time limit"
    assert details["reproducible"] is False  # the wall-clock limit cut the search short, and it says so
    row = details["candidates"][0]
    assert row["candidate"] == details["candidate"] and row["decode_tokens_per_s"] > 0
    columns = {"max_flow", "total_tokens_per_s", "prompt_p50_s", "prompt_p95_s", "decode_p50_s", "decode_p95_s"}
    assert columns <= set(row)
    assert details["reproduce"].startswith("vllm-helix plan --cluster")


def test_bad_placement_yaml(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("n0: [0, 'x']\n")
    proc = run("flow", "--cluster", SINGLE24, "--placement", bad, ok=False)
    assert proc.returncode == 2 and "n0: expected [start, end]" in proc.stderr
    bad.write_text("n0: [0, 90]\n")
    proc = run("flow", "--cluster", SINGLE24, "--placement", bad, ok=False)
    assert proc.returncode == 2 and "outside the model" in proc.stderr


def test_help_on_every_command():
    for command in ("flow", "plan", "keys", "import-ini", "demo", "simulate", "worker"):
        assert "usage: vllm-helix " + command in run(command, "--help").stdout


def test_simulate_a_plan_online_with_plots(tmp_path):
    plan = tmp_path / "plan.yaml"
    run("plan", "--cluster", SINGLE24, "--method", "swarm", "-o", plan)
    out = json.loads(run("simulate", "--cluster", SINGLE24, "--plan", plan, "--mode", "online", "--duration", "60",
                         "--rate", "300", "--json", "--plot", tmp_path / "plots").stdout)
    assert out["queries"]["finished"] == out["queries"]["issued"] > 0
    assert out["total_throughput"] > 0 and out["prompt_latency"]["p99"] >= out["prompt_latency"]["p50"] > 0
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "kv_usage.png", "latency_cdf.png", "throughput.png", "utilization.png"]


def test_simulate_rejects_a_plan_for_another_cluster(tmp_path):
    plan = tmp_path / "plan.yaml"
    run("plan", "--cluster", SINGLE24, "--method", "swarm", "-o", plan)
    other = REF / "3cluster24.ini"
    bad = tmp_path / "c.yaml"
    bad.write_text("nodes: [{name: a, gpu: A100, vram: 40GB}]\ndefault_link: {bandwidth: 1GB/s}\n")
    proc = run("simulate", "--cluster", bad, "--plan", plan, ok=False)
    assert proc.returncode == 2 and "which the cluster does not have" in proc.stderr
    proc = run("simulate", "--cluster", other, "--plan", plan, ok=False)  # same node names, other GPUs
    assert proc.returncode == 2 and "is a L4 but the cluster says A100" in proc.stderr


def test_the_same_plan_is_written_byte_identical_whatever_the_hash_seed(tmp_path):
    # Petals on 3cluster24 has many equal max flows; networkx's preflow-push picked one by hash order.
    written, out = [], tmp_path / "plan.yaml"  # one path: the plan records the command that made it
    for seed in ("1", "2"):
        proc = subprocess.run([sys.executable, "-m", "vllm_helix.cli", "plan", "--cluster", REF / "3cluster24.ini",
                               "--method", "petals", "-o", out], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr
        written.append(out.read_bytes())
    assert written[0] == written[1]


def test_flow_that_serves_nothing_says_why_and_fails(tmp_path):
    cluster = tmp_path / "two.yaml"
    cluster.write_text("nodes: [{name: a, gpu: A100, vram: 400GB}, {name: b, gpu: A100, vram: 400GB}]\n"
                       "default_link: {bandwidth: 10Gbps, latency: 1ms}\n")
    overlap, gap = tmp_path / "overlap.yaml", tmp_path / "gap.yaml"
    overlap.write_text("a: [0, 50]\nb: [40, 80]\n")
    gap.write_text("a: [0, 30]\nb: [40, 80]\n")
    base = ["flow", "--cluster", cluster, "--throughput", "estimate", "--placement"]
    proc = run(*base, overlap, ok=False)
    assert proc.returncode == 2 and "need partial inference: pass --partial-inference" in proc.stderr
    proc = run(*base, gap, ok=False)
    assert proc.returncode == 2 and "layers [30, 40) of the model's 80 are on no node" in proc.stderr
    proc = run("plan", *base[1:], gap, "-o", tmp_path / "plan.yaml", ok=False)
    assert proc.returncode == 2 and "on no node" in proc.stderr and not (tmp_path / "plan.yaml").exists()
    assert json.loads(run(*base, overlap, "--partial-inference", "--json").stdout)["max_flow_tokens_per_s"] > 0


@pytest.mark.parametrize("output", ["missing-dir/plan.yaml", "."])
def test_an_unwritable_output_is_a_usage_error_before_solving(tmp_path, output):
    proc = run("plan", "--cluster", SINGLE24, "--time-limit", "600", "-o", tmp_path / output, ok=False)
    assert proc.returncode == 2 and "argument -o/--output: cannot write" in proc.stderr
    (tmp_path / "a-folder.png").mkdir()
    plot = {"missing-dir/plan.yaml": "missing-dir/flow.png", ".": "a-folder.png"}[output]
    proc = run("flow", "--cluster", SINGLE24, "--placement", REF / "layouts/ilp/ilp_sol.ini",
               "--plot", tmp_path / plot, ok=False)
    assert proc.returncode == 2 and "argument --plot: cannot write" in proc.stderr


def test_simulate_reproduces_the_reference_run_from_the_cli():
    from vllm_helix.sim.run import SimConfig, reference_s1_setup, simulate

    plan, kv = reference_s1_setup()
    expected = simulate(plan, SimConfig.reference_s1(duration_s=60), kv)
    out = json.loads(run("simulate", "--links", REF / "layouts/ilp/simulator_cluster.ini", "--plan",
                         REF / "layouts/ilp/ilp_sol.ini", "--reference-compat", "--initial-queries", "20",
                         "--duration", "60", "--json").stdout)
    assert out["max_flow"] == expected.max_flow
    assert out["decode_throughput"] == expected.decode_throughput > 0
    assert out["decode_latency"] == expected.decode_latency


def test_simulate_evaluates_a_placement_and_checks_initial_queries():
    args = ["simulate", "--cluster", SINGLE24, "--plan", REF / "layouts/swarm/swarm_sol.ini", "--duration", "30",
            "--scheduler", "swarm", "--json"]
    few = json.loads(run(*args, "--initial-queries", "5").stdout)
    assert few["config"]["initial_queries"] == 5 and few["max_flow"] == pytest.approx(757.853, rel=1e-4)
    proc = run(*args, "--initial-queries", "0", ok=False)
    assert proc.returncode == 2 and "initial_queries must be > 0" in proc.stderr
