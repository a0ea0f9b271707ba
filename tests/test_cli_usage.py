"""`vllm-helix` options a run could not honour are refused up front, each with one line that names it."""

import subprocess
import sys
from pathlib import Path

import pytest

from vllm_helix.planner.examples import reference_dir

SINGLE24 = str(reference_dir() / "single24.ini")
SWARM = str(reference_dir() / "layouts/swarm/swarm_sol.ini")


def run(*args):
    return subprocess.run([sys.executable, "-m", "vllm_helix.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def refused(proc, message):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("extra, message", [
    (["--trace", "t.csv"], "--trace is for --mode online"),
    (["--rate", "5"], "--rate is for --mode online"),
    (["--mode", "online", "--initial-queries", "5"], "--initial-queries is for --mode offline"),
    (["--max-num-seqs", "8"], "--max-num-seqs is for --helix-depth"),
    (["--max-num-seqs", "8", "--max-num-batched-tokens", "64"],
     "--max-num-batched-tokens, --max-num-seqs are for --helix-depth"),
])
def test_a_simulate_flag_the_run_would_ignore_is_an_error(extra, message):
    refused(run("simulate", "--cluster", SINGLE24, "--plan", SWARM, "--duration", "5", *extra), message)


def test_the_reference_run_takes_no_cluster_of_the_users():
    refused(run("simulate", "--reference-s1", "--cluster", "c.yaml", "--duration", "5"),
            "--cluster, --duration are fixed by --reference-s1")


@pytest.mark.parametrize("extra, message", [
    (["--seed", "0"], "error: --seed is fixed by --reference-s1"),  # a flag given at its default counts too
    (["--model", "llama2-70b", "--duration", "5"], "error: --model, --duration are fixed by --reference-s1"),
    (["--mode", "offline", "--scheduler", "maxflow"], "error: --mode, --scheduler are fixed by --reference-s1"),
])
def test_the_reference_run_refuses_the_settings_it_fixes(extra, message):
    refused(run("simulate", "--reference-s1", *extra), message)


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    plan = tmp_path_factory.mktemp("plan") / "plan.yaml"
    done = run("plan", "--cluster", SINGLE24, "--placement", SWARM, "-o", plan)
    assert done.returncode == 0, done.stderr
    return plan


@pytest.mark.parametrize("extra, message", [
    (["--model", "llama2-70b"], "error: --model is taken from the --plan file"),
    (["--throughput", "auto", "--partial-inference"], "error: --throughput, --partial-inference are taken from the "
                                                      "--plan file"),
    (["--links", reference_dir() / "layouts/ilp/simulator_cluster.ini", "--throughput", "reference"],
     "error: --throughput is not used with --links"),
])
def test_simulating_a_plan_file_refuses_what_the_plan_brings(plan_file, extra, message):
    refused(run("simulate", "--cluster", SINGLE24, "--plan", plan_file, "--duration", "5", *extra), message)


@pytest.mark.parametrize("extra, message", [
    (["--previous", "old.yaml"], "error: --previous is not used with --placement"),
    (["--method", "auto", "--objective", "throughput"], "error: --method, --objective are not used with --placement"),
    (["--rate", "5", "--solver", "auto"], "error: --rate, --solver are not used with --placement"),
    (["--time-limit", "120", "--move-tolerance", "0.05"], "error: --time-limit, --move-tolerance are not used with "
                                                          "--placement"),
])
def test_a_fixed_placement_refuses_the_search_flags(tmp_path, extra, message):
    refused(run("plan", "--cluster", SINGLE24, "--placement", SWARM, "-o", tmp_path / "p.yaml", *extra), message)
    assert not (tmp_path / "p.yaml").exists()


@pytest.mark.parametrize("extra, message", [
    (["--method", "petals", "--time-limit", "5", "--solver", "cpsat"],
     "error: --solver, --time-limit are for the MILP (--method petals solves none)"),
    (["--method", "swarm", "--partial-inference"], "error: --partial-inference is for the MILP"),
    (["--method", "milp", "--objective", "latency", "--rate", "5"],
     "error: --objective is for --method auto (a single method and --previous plan for max flow); --rate is for"),
    (["--method", "homogeneous", "--sim-window", "30"], "error: --sim-window is for --method auto"),
    (["--previous", "old.yaml", "--slo", "2"], "error: --slo is for --method auto"),
])
def test_a_single_method_refuses_what_only_the_search_or_the_milp_reads(tmp_path, extra, message):
    refused(run("plan", "--cluster", SINGLE24, "-o", tmp_path / "p.yaml", *extra), message)
    assert not (tmp_path / "p.yaml").exists()


def test_a_single_method_takes_the_objective_it_plans_for(tmp_path):
    done = run("plan", "--cluster", SINGLE24, "--method", "petals", "--objective", "max-flow",
               "-o", tmp_path / "p.yaml")
    assert done.returncode == 0, done.stderr


def test_a_move_tolerance_needs_previous(tmp_path):
    refused(run("plan", "--cluster", SINGLE24, "--method", "swarm", "--move-tolerance", "0.05",
                "-o", tmp_path / "p.yaml"), "error: --move-tolerance is for --previous")


def test_plots_go_to_a_format_and_a_folder_that_can_take_them(tmp_path):
    placement = ["--cluster", SINGLE24, "--placement", reference_dir() / "layouts/ilp/ilp_sol.ini"]
    refused(run("flow", *placement, "--plot", tmp_path / "x.txt"), "name a .png, .svg, .pdf file")
    done = run("flow", *placement, "--plot", tmp_path / "x.svg")
    assert done.returncode == 0 and (tmp_path / "x.svg").read_text().lstrip().startswith("<?xml"), done.stderr
    a_file = tmp_path / "afile"
    a_file.write_text("")
    refused(run("simulate", "--cluster", SINGLE24, "--plan", SWARM, "--duration", "5", "--plot", a_file),
            f"cannot make folder {a_file}")


@pytest.mark.parametrize("timeout", ["inf", "nan", "0"])
def test_discover_waits_a_finite_positive_time(timeout):
    refused(run("discover", "--hosts", "127.0.0.1:1", "--timeout", timeout, "-o", "c.yaml"),
            "is not a positive number of seconds")


def test_an_output_that_is_also_an_input_is_refused_and_the_input_kept(tmp_path):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("nodes: [{name: a, gpu: A100, vram: 80GB}]\ndefault_link: {bandwidth: 1GB/s}\n")
    before = cluster.read_text()
    refused(run("plan", "--cluster", cluster, "-o", tmp_path / "." / "cluster.yaml"),
            "is also the --cluster input")
    assert cluster.read_text() == before


def test_an_output_over_a_model_profile_or_plot_is_refused_and_nothing_written(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "a.json").write_text("{}")
    machines = tmp_path / "machines.ini"
    machines.write_text("[x]\n")
    plan = ["plan", "--cluster", SINGLE24, "--placement", SWARM]
    refused(run(*plan, "--model", model / "config.json", "-o", model / "config.json"),
            f"error: -o {model / 'config.json'} is also the --model input")
    refused(run(*plan, "--model", model, "-o", model / "tokenizer.json"),
            f"would replace a file of the --model folder {model}")
    refused(run(*plan, "--profiles", tmp_path / "profiles", "-o", tmp_path / "profiles" / "a.json"),
            "whose *.json files are read as profiles")
    refused(run("import-ini", SINGLE24, "--machine-profile", machines, "-o", machines),
            "is also the --machine-profile input")
    refused(run(*plan, "-o", tmp_path / "x.png", "--plot", tmp_path / "x.png"), "is also the --plot output")
    assert not (tmp_path / "x.png").exists() and (model / "tokenizer.json").read_text() == "{}"
    assert machines.read_text() == "[x]\n" and (tmp_path / "profiles" / "a.json").read_text() == "{}"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a full disk)")
@pytest.mark.parametrize("command, what", [
    (["plan", "--cluster", SINGLE24, "--placement", SWARM], "plan"),
    (["import-ini", SINGLE24], "cluster"),
])
def test_a_full_disk_is_one_line_naming_the_file(command, what):
    done = run(*command, "-o", "/dev/full")
    refused(done, f"error: /dev/full: cannot write {what} (No space left on device)")
    assert done.stderr.count("\n") == 1


def test_demo_checks_its_time_limit_before_printing_anything():
    done = run("demo", "--time-limit", "0")
    refused(done, "is not a positive number of seconds")
    assert done.stdout == ""
