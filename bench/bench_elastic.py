"""Elastic serving under churn: kill and restart a node again and again under a steady load (README "Elastic serving").

    .venv/bin/python bench/bench_elastic.py [--kills 20] [--clients 8] [--phase-s 30]

`vllm serve --executor helix` on a redundant local plan of the tiny Llama — a [0, 2), b [2, 8), c [2, 8), all
local, eager — under `--clients` streaming greedy completions in a loop. After a quiet `--phase-s`, b and c are
SIGKILLed in turn `--kills` times; each time the coordinator restarts the node and the next kill waits until
it rejoined. A last `--phase-s` follows. Printed: requests finished and lost (not ended by their length: the
goal is 0); for every request routed through a killed node, the time from the kill to its next token (p50,
p99); output tokens/s before the first kill, while the kills go on, and after the last rejoin; the RSS of the
coordinator (vLLM's engine-core process, where the Helix executor runs) at the start and at the end.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from vllm_helix.models.tiny import build_tiny_llama
from vllm_helix.vllm_server import VllmServer

COMMON = ["--max-model-len", "512", "--max-num-batched-tokens", "64", "--max-num-seqs", "32", "--dtype", "float32",
          "--enforce-eager"]
PLACEMENT = {"a": [0, 2], "b": [2, 8], "c": [2, 8]}


@dataclass
class Stream:
    started: float
    completion_id: str = ""
    token_times: list[float] = field(default_factory=list)
    finish: str | None = None


def client(url: str, model: str, stop: threading.Event, streams: list[Stream], max_tokens: int, seed: int) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        body = {"model": model, "prompt": f"{seed}.{i} robots counted the stars in the night sky, and then",
                "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
        stream = Stream(time.monotonic())
        streams.append(stream)
        request = urllib.request.Request(url + "/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=900) as response:
                for raw in response:
                    if not raw.startswith(b"data: {"):
                        continue
                    chunk = json.loads(raw[6:])
                    if "error" in chunk:
                        stream.finish = "error"
                        break
                    stream.completion_id = chunk["id"]
                    stream.token_times.append(time.monotonic())
                    stream.finish = chunk["choices"][0].get("finish_reason") or stream.finish
        except OSError as exc:
            stream.finish = f"error: {exc}"


def write_plan(tmp: Path, model: Path) -> Path:
    import subprocess
    import sys

    cluster = {"name": "churn", "coordinator": {"address": "local"},
               # `gpus` weights the plan's flows; `tp: 1` keeps each node one process on this small host
               "nodes": [{"name": n, "gpu": "cpu", "gpus": g, "tp": 1, "vram": "4GB", "address": "local"}
                         for n, g in (("a", 4), ("b", 2), ("c", 2))],
               "default_link": {"bandwidth": "10Gbps", "latency": "0.1ms"}}
    (tmp / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    (tmp / "placement.yaml").write_text(yaml.safe_dump(PLACEMENT))
    subprocess.run([sys.executable, "-m", "vllm_helix.cli", "plan", "--cluster", str(tmp / "cluster.yaml"),
                    "--model", str(model), "--throughput", "estimate", "--placement", str(tmp / "placement.yaml"),
                    "-o", str(tmp / "plan.yaml")], check=True, capture_output=True)
    return tmp / "plan.yaml"


def processes(server: VllmServer) -> tuple[psutil.Process, dict[str, psutil.Process]]:
    """vLLM's engine-core process (the coordinator) and the local workers by node name."""
    workers, core = {}, None
    for child in psutil.Process(server.process.pid).children(recursive=True):
        command = child.cmdline()
        if "--node" in command:
            workers[command[command.index("--node") + 1]] = child
        elif "EngineCore" in child.name() or any("EngineCore" in part for part in command):
            core = child
    if core is None:
        raise RuntimeError("no engine-core process found under vllm serve")
    return core, workers


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def rate(streams: list[Stream], start: float, end: float) -> float:
    tokens = sum(1 for s in streams for t in s.token_times if start <= t < end)
    return tokens / (end - start) if end > start else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--phase-s", type=float, default=30.0)
    parser.add_argument("--rejoin-timeout-s", type=float, default=300.0, help="how long a restarted node may take")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-elastic-"))
    model = build_tiny_llama(tmp / "model")
    plan = write_plan(tmp, model)
    routes_log = tmp / "routes.log"
    server = VllmServer(model, ["--executor", "helix", "--helix-plan", str(plan), "--helix-route-log", str(routes_log),
                                *COMMON], log_path=tmp / "serve.log")
    with server as url:
        core, _ = processes(server)
        rss_start = core.memory_info().rss
        stop, streams = threading.Event(), []
        clients = [threading.Thread(target=client, args=(url, str(model), stop, streams, args.max_tokens, i))
                   for i in range(args.clients)]
        for thread in clients:
            thread.start()
        time.sleep(args.phase_s)
        kills: list[tuple[float, str, set[str]]] = []  # (when, node, completion ids routed through it)
        not_back = "none"
        first_kill = time.monotonic()
        for k in range(args.kills):
            node = "bc"[k % 2]
            _, workers = processes(server)
            rejoined = server.log_path.read_text().count(f"Helix node {node} [2, 8) rejoined")
            in_flight = {s.completion_id for s in list(streams) if s.finish is None and s.completion_id}
            workers[node].kill()
            when = time.monotonic()
            routed = {line.split()[1].rstrip(":") for line in routes_log.read_text().splitlines()
                      if f"-> {node} " in line}
            kills.append((when, node, {c for c in in_flight if any(r.startswith(c) for r in routed)}))
            deadline = time.monotonic() + args.rejoin_timeout_s
            while server.log_path.read_text().count(f"Helix node {node} [2, 8) rejoined") <= rejoined:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            else:
                print(f"kill {k + 1}/{args.kills}: {node} back after {time.monotonic() - when:.1f} s", flush=True)
                continue
            # a failure of what the benchmark measures: report it with the numbers so far, stop killing
            not_back = f"{node} (kill {k + 1}) not back within {args.rejoin_timeout_s:.0f} s; see {server.log_path}"
            print(f"kill {k + 1}/{args.kills}: {not_back}", flush=True)
            break
        last_rejoin = time.monotonic()
        time.sleep(args.phase_s)
        stop.set()
        for thread in clients:
            thread.join(timeout=900)
        end = time.monotonic()
        rss_end = core.memory_info().rss
    gaps = []
    for when, _, ids in kills:
        for stream in streams:
            if stream.completion_id in ids:
                after = [t for t in stream.token_times if t >= when]
                if after:
                    gaps.append(after[0] - when)
    finished = [s for s in streams if s.finish is not None]
    lost = [s for s in finished if s.finish != "length"]
    start = streams[0].started if streams else first_kill
    rows = [
        ("requests finished / lost", f"{len(finished)} / {len(lost)}"),
        ("kills (each node restarted by the coordinator)", f"{len(kills)}"),
        ("restarted nodes that did not rejoin (the kills stop there)", not_back),
        ("requests rerouted (routed through a killed node)", f"{len(gaps)}"),
        ("kill -> next token of a rerouted request, p50 / p99", f"{percentile(gaps, 0.5):.2f} s / "
                                                                 f"{percentile(gaps, 0.99):.2f} s"),
        ("output tokens/s before / while / after", f"{rate(streams, start, first_kill):.1f} / "
                                                   f"{rate(streams, first_kill, last_rejoin):.1f} / "
                                                   f"{rate(streams, last_rejoin, end):.1f}"),
        ("coordinator (engine core) RSS start / end", f"{rss_start / 2**20:.0f} MiB / {rss_end / 2**20:.0f} MiB "
                                                      f"({100 * (rss_end / rss_start - 1):+.1f} %)"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'what'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    if lost:
        print("lost:", [(s.completion_id, s.finish) for s in lost][:10])
    print(f"log: {server.log_path}")


if __name__ == "__main__":
    main()
