"""`vllm-helix` options a run could not honour are refused up front, each with one line that names it."""

import subprocess
import sys

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
    (["--max-num-seqs", "8"], "--max-num-batched-tokens, --max-num-seqs are for --helix-depth"),
])
def test_a_simulate_flag_the_run_would_ignore_is_an_error(extra, message):
    refused(run("simulate", "--cluster", SINGLE24, "--plan", SWARM, "--duration", "5", *extra), message)


def test_the_reference_run_takes_no_cluster_of_the_users():
    refused(run("simulate", "--reference-s1", "--cluster", "c.yaml", "--duration", "5"),
            "--cluster, --plan, --links are fixed by --reference-s1")


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


def test_demo_checks_its_time_limit_before_printing_anything():
    done = run("demo", "--time-limit", "0")
    refused(done, "is not a positive number of seconds")
    assert done.stdout == ""
