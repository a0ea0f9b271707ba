"""What encryption costs: Helix serving with CURVE links (the default across hosts) vs `--helix-insecure`.

    sudo .venv/bin/python bench/bench_secure.py [--rounds 1] [--requests 32] [--max-tokens 48] [--rate 1gbit]

Setup (needs root, like the netns tests): two worker hosts in network namespaces joined to the root namespace
by veth links shaped with netem/tbf (tests/netns_hosts.py), each worker pinned to its own core, the
coordinator (`vllm serve --executor helix`) in the root namespace; the model and load are those of
bench/bench_serving.py's (c) setup: an 8-layer random Llama, hidden 2048, float32, split [0,4) [4,8).
The two modes alternate `--rounds` times with fresh clusters; besides tokens/s it reports the CPU time all
cluster processes (server, engine core, both workers) spent per output token, which a loaded machine
disturbs less than wall-clock rates. First, a transport-only measure that the
machine's load disturbs less: CPU time per activation-sized message (32 rows x 2048 x 2 tensors, float32),
plain vs CURVE, between two endpoints on loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from bench_serving import COMMON, cpu_by_process, cpu_used_s, load, warm_up

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from netns_hosts import NetnsHosts  # noqa: E402

from vllm_helix.comm import CurveKeys, Endpoint, EndpointOptions, Header  # noqa: E402
from vllm_helix.models.tiny import build_tiny_llama  # noqa: E402
from vllm_helix.vllm_server import VllmServer  # noqa: E402


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def transport_cost(messages: int = 400, rows: int = 32, hidden: int = 2048) -> dict[str, float]:
    """CPU µs per step-sized message (both endpoints live in this process, all threads counted)."""
    hidden_states = np.ones((rows, hidden), np.float32)
    out = {}
    for mode in ("plain", "curve"):
        ka, kb = CurveKeys.generate(), CurveKeys.generate()
        ca = CurveKeys(ka.public, ka.secret, (kb.public,)) if mode == "curve" else None
        cb = CurveKeys(kb.public, kb.secret, (ka.public,)) if mode == "curve" else None
        options = EndpointOptions(peer_timeout_s=10)
        with Endpoint("a", options=options, curve=ca) as a, Endpoint("b", options=options, curve=cb) as b:
            a.connect("b", b.address, kb.public if ca else None)
            a.send("b", Header("warm"), [hidden_states, hidden_states])
            b.recv(timeout=10)
            t0, c0 = time.monotonic(), cpu_s()
            for _ in range(messages):
                a.send("b", Header("step"), [hidden_states, hidden_states])
                b.recv(timeout=10)
            out[mode] = ((cpu_s() - c0) / messages * 1e6, (time.monotonic() - t0) / messages * 1e6)
    return out


@contextlib.contextmanager
def cluster(hosts: list, plan: Path, model: Path, workdir: Path, insecure: bool, eager: bool):
    """Two pinned workers in their namespaces and `vllm serve` in the root namespace (a fresh cluster)."""
    flag = ["--helix-insecure"] if insecure else []
    workers = []
    for i, host in enumerate(hosts):
        argv = ["taskset", "-c", str(i), sys.executable, "-m", "vllm_helix.cli", "worker", "--plan",
                str(plan), "--node", f"node{i}", "--model", str(model), "--kv-fraction", "0.02",
                "--max-model-len", "1024", "--dtype", "float32", "--max-num-batched-tokens", "512",
                "--max-num-seqs", "64", *flag, *(["--enforce-eager"] if eager else [])]
        with open(workdir / f"node{i}-{'plain' if insecure else 'curve'}.log", "w") as log:
            workers.append(subprocess.Popen(host.command(*argv), stdout=log, stderr=subprocess.STDOUT,
                                            env=dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=str(i))))
    args = [*COMMON, "--executor", "helix", "--helix-plan", str(plan), *flag]
    try:
        server = VllmServer(model, args, log_path=workdir / f"serve-{'plain' if insecure else 'curve'}.log")
        with server as url:
            yield url, [server.process.pid, *(w.pid for w in workers)]
    finally:
        for w in workers:
            w.terminate()
            w.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="alternating CURVE / plain runs of each mode")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--rate", default="1gbit", help="each veth link's rate (netem/tbf)")
    parser.add_argument("--delay-ms", type=float, default=1.0)
    parser.add_argument("--enforce-eager", action="store_true", help="workers skip torch.compile (faster start)")
    parser.add_argument("--transport-only", action="store_true")
    opts = parser.parse_args()

    print("transport, one step-sized message (2 x 32 x 2048 float32 = 512 KiB), loopback:")
    for mode, (cpu_us, wall_us) in transport_cost(hidden=opts.hidden).items():
        print(f"  {mode:<6} {cpu_us:>9.0f} CPU µs/message {wall_us:>9.0f} µs/message wall")
    if opts.transport_only:
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="helix-bench-secure-"))
    model = build_tiny_llama(workdir / "model", hidden_size=opts.hidden, heads=opts.hidden // 64, kv_heads=4,
                             intermediate=opts.hidden * 11 // 4)
    netns = NetnsHosts()
    try:
        hosts = [netns.make(opts.rate, opts.delay_ms) for _ in range(2)]
        coordinator = f"{hosts[0].gateway}:{7400 + os.getpid() % 500}"
        cluster_spec = {"name": "bench-secure", "coordinator": {"address": coordinator},
                        "nodes": [{"name": f"node{i}", "gpu": "cpu", "vram": "8GB", "address": f"{h.address}:7401"}
                                  for i, h in enumerate(hosts)],
                        "default_link": {"bandwidth": "1Gbps", "latency": "1ms"}}
        (workdir / "cluster.yaml").write_text(yaml.safe_dump(cluster_spec))
        (workdir / "placement.yaml").write_text(yaml.safe_dump({"node0": [0, 4], "node1": [4, 8]}))
        plan = workdir / "plan.yaml"
        subprocess.run([sys.executable, "-m", "vllm_helix.cli", "plan", "--cluster", str(workdir / "cluster.yaml"),
                        "--model", str(model), "--throughput", "estimate", "--placement",
                        str(workdir / "placement.yaml"), "-o", str(plan)], check=True, capture_output=True)
        print(f"\n{opts.requests} concurrent requests x {opts.max_tokens} tokens; links {hosts[0].shaping}")
        print(f"{'round':<8}{'mode':<30}{'out tok/s':>10}{'TTFT s':>10}{'TPOT ms':>10}{'CPU ms/tok':>12}")
        results: dict[str, list[float]] = {"curve": [], "plain": []}
        cpu: dict[str, list[float]] = {"curve": [], "plain": []}
        for r in range(opts.rounds):
            for insecure in (False, True):
                mode = "plain" if insecure else "curve"
                with cluster(hosts, plan, model, workdir, insecure, opts.enforce_eager) as (url, pids):
                    warm_up(url, str(model))
                    cpu0 = cpu_by_process(pids)
                    out = load(url, str(model), opts.requests, opts.max_tokens)
                    cpu_ms = cpu_used_s(cpu0, cpu_by_process(pids)) * 1e3 / (opts.requests * opts.max_tokens)
                results[mode].append(out["tokens_per_s"])
                cpu[mode].append(cpu_ms)
                label = "--helix-insecure (plain TCP)" if insecure else "CURVE (default)"
                print(f"{r + 1:<8}{label:<30}{out['tokens_per_s']:>10.1f}{out['ttft_s']:>10.2f}"
                      f"{out['tpot_s'] * 1e3:>10.1f}{cpu_ms:>12.1f}", flush=True)
        (curve, plain), (curve_cpu, plain_cpu) = ([sum(v) / len(v) for v in (d["curve"], d["plain"])]
                                                  for d in (results, cpu))
        print(f"mean: CURVE {curve:.1f} tok/s, plain {plain:.1f} tok/s: {100 * (1 - curve / plain):+.1f} % lower "
              f"with encryption (goal < 5 %); CPU per token {curve_cpu:.1f} vs {plain_cpu:.1f} ms "
              f"({100 * (curve_cpu / plain_cpu - 1):+.1f} %)")
    finally:
        netns.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
