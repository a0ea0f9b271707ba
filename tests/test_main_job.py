"""The README's main job, run as a newcomer runs it: its output must be readable and complete."""

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.engine
@pytest.mark.slow
def test_main_job_prints_a_readable_answer_its_route_and_numbers(tmp_path):
    env = dict(os.environ, VLLM_HELIX_CACHE=str(tmp_path / "cache"), VLLM_CPU_OMP_THREADS_BIND="nobind")
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "serve_local3.py")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=1500)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr[-3000:]
    for node, layers in (("node-a", "[0, 2)"), ("node-b", "[2, 5)"), ("node-c", "[5, 8)")):
        for phase in ("loading", "compiling", "warming up", "ready", "calibrating"):
            assert re.search(rf"node {node} {re.escape(layers)}: {phase} +\d+\.\d s", out), (node, phase, out)
    # the start-up probes run together, once every node is ready (nodes sharing a host probe under the same load)
    assert out.rindex(": ready ") < out.index(": calibrating "), out
    answer = re.search(r"^assistant: (.*)$", out, re.M).group(1)
    assert not [c for c in answer if unicodedata.category(c)[0] == "C"], repr(answer)
    assert len(re.findall(r"\b[A-Za-z]{2,}\b", answer)) >= 5 and answer.isascii(), repr(answer)  # words
    route = re.search(r"^route: +(.*)$", out, re.M).group(1)
    assert route == "coordinator -> node-a [0, 2) -> node-b [2, 5) -> node-c [5, 8) -> coordinator"
    assert re.search(r"^\d+ tokens in \d+\.\d+ s: \d+\.\d tokens/s, time to first token \d+\.\d+ s$", out, re.M), out
    shares = re.search(r"^node busy share: (.*)$", out, re.M).group(1)
    assert re.fullmatch(r"node-a \d+%, node-b \d+%, node-c \d+% of \d+\.\d+ s with batches in flight", shares), out
