"""bench/bench_serving.py's choice of setups for the machine it runs on, through its command line (no server starts:
every choice below, and every load or model it cannot serve, is refused before the model is built)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_serving.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("args", "said"), [
    (["--setups", "b,b*", "--enforce-eager"], "skipping (b) vLLM PP=2, [0,4) [4,8): vLLM 0.32's pipeline parallelism "
                                              "fails under --enforce-eager"),
    (["--setups", "x"], "--setups takes a comma-separated subset of a, b, c, ca, b*, d, dp, d0"),
    (["--rounds", "0"], "--rounds from 1 to 20; got 0"),
    (["--setups", "c,x"], "--setups takes a comma-separated subset of a, b, c, ca, b*, d, dp, d0; got 'c,x'"),
    (["--setups", "c", "--profiles", "."], "--profiles is for setup dp"),
    (["--setups", "c, dp", "--profiles", __file__], "not a folder"),
    (["--max-tokens", "1500"], "--max-tokens from 1 to 768 (a prompt and its output fit the servers' 1024-token "
                               "context); got 32 and 1500"),
    (["--requests", "0"], "--requests from 1 to 1024"),
    (["--hidden", "100"], "--hidden must be a multiple of 256"),
    (["--hidden", "256000"], "up to 8192; got 256000"),
    (["--helix-depth", "-1"], "--helix-depth must be 0 (auto) or more"),
    (["--coordinator-delay-ms", "-5"], "--coordinator-delay-ms from 0 to 1000; got -5.0"),
    (["--setups", "b", "--coordinator-delay-ms", "5"], "--coordinator-delay-ms is for setups c and ca"),
])
def test_setups_or_a_load_this_machine_cannot_run_are_refused_with_the_reason(args, said):
    done = _run(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def _module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_serving
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return bench_serving


def test_which_setups_a_cpu_one_gpu_or_two_gpu_machine_runs():
    bench_serving = _module()
    assert [s for s in bench_serving.NAMES if bench_serving.unavailable(s, gpus=0, eager=False)] == []
    on_one_gpu = {s: bench_serving.unavailable(s, gpus=1, eager=False) for s in bench_serving.NAMES}
    assert [s for s, why in on_one_gpu.items() if why is None] == ["a", "c", "ca"]
    assert on_one_gpu["b"] == "pipeline parallelism needs 2 GPUs"
    assert bench_serving.unavailable("b", gpus=2, eager=False) is None
    assert bench_serving.node_cores(0) == ["0", "1"]


def test_the_cpu_column_counts_every_process_the_benchmark_started_down_the_tree():
    bench_serving = _module()
    # a child whose own child burns 0.6 s of CPU and then waits, as vllm serve waits on its engine core
    burn = "import sys, time\nwhile time.process_time() < 0.6:\n    pass\nprint('burnt', flush=True)\nsys.stdin.read()"
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', "
                               f"{burn!r}])"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline() == "burnt\n"
        below = sum(bench_serving.cpu_by_process([parent.pid], roots=False).values())
        assert below >= 0.5  # /proc counts in clock ticks
        assert sum(bench_serving.cpu_by_process([parent.pid]).values()) >= below  # and the parent's own (little)
        assert sum(bench_serving.served_cpu().values()) >= 0.5  # descendants of this process, as servers and nodes
    finally:
        parent.stdin.close()
        parent.wait(10)



def test_cpu_used_counts_the_processes_seen_at_both_ends_only():
    bench_serving = _module()
    # pid 3 was missed by the first reading (or started since): its 40 s are mostly from before the load
    assert bench_serving.cpu_used_s({1: 10.0, 2: 5.0}, {1: 10.5, 3: 40.0}) == 0.5


def test_the_report_gives_cpu_per_token_busy_cores_the_ratio_per_round_and_each_rounds_cycle(capsys):
    bench_serving = _module()

    def row(tokens_per_s, cpu_ms_per_token, busy_cores):
        return {"tokens_per_s": tokens_per_s, "ttft_s": 0.5, "tpot_s": 0.04, "cpu_ms_per_token": cpu_ms_per_token,
                "busy_cores": busy_cores}

    bench_serving.report({"b": [row(700, 2.8, 1.95), row(800, 2.5, 1.94)],
                          "c": [row(770, 2.4, 1.81), row(880, 2.1, 1.83)]}, {})
    out = capsys.readouterr().out
    assert "| (b) vLLM PP=2, [0,4) [4,8) | 750.0 [700.0-800.0] | 0.50 [0.50-0.50] | 40.0 [40.0-40.0] | " \
           "2.6 [2.5-2.8] | 1.94 [1.94-1.95] |" in out
    assert "(c)/(b) = 1.10 (medians); per round 1.10, 1.10" in out
    cycle = {"engine": 1.0, "build": 0.5, "in": 1.0, "wait": 2.5, "compute": 30.0, "post": 1.0, "return": 0.5,
             "finish": 0.1}
    assert bench_serving.cycles_by_round([{"cycle": cycle}, {"cycle": {}}]) == "30.0 + 6.6, -"
