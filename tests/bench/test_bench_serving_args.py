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
    (["--setups", "x"], "--setups takes a comma-separated subset of a, b, c, b*, d, dp, d0"),
    (["--rounds", "0"], "--rounds from 1 to 20; got 0"),
    (["--setups", "c,x"], "--setups takes a comma-separated subset of a, b, c, b*, d, dp, d0; got 'c,x'"),
    (["--setups", "c", "--profiles", "."], "--profiles is for setup dp"),
    (["--setups", "c, dp", "--profiles", __file__], "not a folder"),
    (["--max-tokens", "1500"], "--max-tokens from 1 to 768 (a prompt and its output fit the servers' 1024-token "
                               "context); got 32 and 1500"),
    (["--requests", "0"], "--requests from 1 to 1024"),
    (["--hidden", "100"], "--hidden must be a multiple of 256"),
    (["--hidden", "256000"], "up to 8192; got 256000"),
    (["--helix-depth", "-1"], "--helix-depth must be 0 (auto) or more"),
])
def test_setups_or_a_load_this_machine_cannot_run_are_refused_with_the_reason(args, said):
    done = _run(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_which_setups_a_cpu_one_gpu_or_two_gpu_machine_runs():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_serving
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert [s for s in bench_serving.NAMES if bench_serving.unavailable(s, gpus=0, eager=False)] == []
    on_one_gpu = {s: bench_serving.unavailable(s, gpus=1, eager=False) for s in bench_serving.NAMES}
    assert [s for s, why in on_one_gpu.items() if why is None] == ["a", "c"]
    assert on_one_gpu["b"] == "pipeline parallelism needs 2 GPUs"
    assert bench_serving.unavailable("b", gpus=2, eager=False) is None
    assert bench_serving.node_cores(0) == ["0", "1"]
