"""Shared pieces of the serving tests (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

# float32: bf16 rounding depends on batch shape, and nodes batch differently from one engine
COMMON = ["--max-model-len", "512", "--max-num-batched-tokens", "64", "--max-num-seqs", "32", "--dtype", "float32"]
# tool calling for the shared servers (plain and Helix): a tools chat template and vLLM's Hermes parser
TOOLS = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes",
         "--chat-template", str(Path(__file__).with_name("serving") / "tool_chat_template.jinja")]
PROMPTS = [
    "The capital of France is",
    "Once upon a time there was a little robot who liked to count the stars in the night sky.",
    "One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, thirteen. " * 3,
    "Hello!",
    "Placement is a maximum flow problem: nodes, links, a source and a sink with capacities. " * 5,
]
CLUSTER = {
    "name": "branch",
    "coordinator": {"address": "local"},
    "nodes": [
        # `gpus` weights the planner; `tp: 1` keeps each node one process (no tensor parallelism) on a small host
        {"name": "head", "gpu": "cpu", "gpus": 4, "tp": 1, "vram": "4GB", "address": "local"},
        {"name": "fast", "gpu": "cpu", "gpus": 2, "tp": 1, "vram": "4GB", "address": "local"},
        {"name": "slow", "gpu": "cpu", "gpus": 1, "vram": "4GB", "address": "local"},
    ],
    "default_link": {"bandwidth": "10Gbps", "latency": "0.1ms"},
}
PLACEMENT = {"head": [0, 2], "fast": [2, 8], "slow": [2, 8]}


def write_plan(tmp, model, cluster=CLUSTER, placement=PLACEMENT, profiles=None):
    """The plan of `placement` on `cluster`: from the measured profiles in folder `profiles`, else estimated."""
    (tmp / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    (tmp / "placement.yaml").write_text(yaml.safe_dump(placement))
    numbers = ["--profiles", profiles] if profiles else ["--throughput", "estimate"]
    subprocess.run([sys.executable, "-m", "vllm_helix.cli", "plan", "--cluster", tmp / "cluster.yaml", "--model", model,
                    *numbers, "--placement", tmp / "placement.yaml", "-o", tmp / "plan.yaml"],
                   check=True, capture_output=True)
    return tmp / "plan.yaml"


def local_worker(server, name):
    """The process of local node `name` of a `vllm serve --executor helix` (a VllmServer): one of its children."""
    import psutil

    for child in psutil.Process(server.process.pid).children(recursive=True):
        command = child.cmdline()
        if "worker" in command and "--node" in command and command[command.index("--node") + 1] == name:
            return child
    raise AssertionError(f"no local worker {name}")


def post(url, path, body, timeout=300):
    request = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if body.get("stream"):
            return [json.loads(line[6:]) for line in response.read().decode().splitlines()
                    if line.startswith("data: {")]
        return json.load(response)


def completion_tokens(url, model, **extra):
    body = {"model": str(model), "prompt": PROMPTS, "max_tokens": 24, "temperature": 0, "return_token_ids": True,
            **extra}
    out = post(url, "/completions", body)
    return [c["token_ids"] for c in sorted(out["choices"], key=lambda c: c["index"])]


def kill_mid_burst(url, server, model, node="slow", requests=12) -> tuple[list[str], list[str]]:
    """Send a burst of 60-token completions, kill local node `node` 1.5 s in, wait for every answer. Returns each
    request's finish reason (or `http CODE`) and the server log's lines about failures and losses."""
    outcomes = []

    def call(i):
        body = {"model": str(model), "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": 60, "temperature": 0}
        try:
            outcomes.append(post(url, "/completions", body, timeout=300)["choices"][0]["finish_reason"])
        except urllib.error.HTTPError as exc:
            outcomes.append(f"http {exc.code}")

    victim = local_worker(server, node)
    with cf.ThreadPoolExecutor(requests) as pool:
        futures = [pool.submit(call, i) for i in range(requests)]
        time.sleep(1.5)
        victim.kill()
        cf.wait(futures, timeout=350)
    why = [line for line in server.log_path.read_text().splitlines() if "failed" in line or "lost" in line]
    return outcomes, why
