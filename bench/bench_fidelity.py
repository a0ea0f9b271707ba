"""Simulator fidelity: does `vllm-helix simulate` predict our own cluster? Predicted vs measured, side by side.

    .venv/bin/python bench/bench_fidelity.py [--rounds 3] [--requests 16] [--max-tokens 32] [--hidden 1024]
                                             [--quick-profile | --profiles DIR]

1. Profiles this machine (`vllm-helix profile --enforce-eager`, the full sweep: a median of 5 runs per point;
   `--quick-profile`: the quick one, 3 runs, whose noise moves the prediction by up to 20 %): `cpu` as a node
   runs (one torch thread). `--profiles DIR`: use a profile taken before (of the same `--hidden` model).
2. For each setup, plans it from that profile (`vllm-helix plan --profiles`), simulates the benchmark's load
   on the plan (`vllm-helix simulate --mode online --trace`: every request arrives at once, the real prompt
   length, `--max-tokens` out; `--helix-depth 0` with the server's token budget and running cap: the steps the
   coordinator keeps in flight) and serves the same plan with `vllm serve --executor helix`, measured with
   bench_serving's load generator (concurrent streaming completions, output tokens/s).
   The cluster files say what the model needs to know: every node is local (`host_cores`: they share this
   machine's cores), and the capped node runs under a CPU quota (`cpu_quota`: the planner plans for what it
   sustains, the simulator throttles it per CFS period as the kernel does).
   (a) the 3-node chain of examples/local3-placement.yaml;
   (b) 2 replicas of the whole model, node `fast` and node `slow` (capped at half a core once it runs); the
       plan's max flow splits requests between them.
   Each setup's server serves the load `--rounds` times; the table has the median and the spread.
Predicted = requests x max_tokens / (the last simulated finish - the first arrival). Goal: within 15 %.
Also printed: what the simulator's earlier model predicts (nodes batch whatever is queued, each on its own core),
and two diagnostics from each round's own measurement: the prediction on the free cores less what the
coordinator's processes used, and "CPU / profiled": the CPU seconds the nodes' processes used over the profile's
solo seconds for the batches they ran (from the per-batch trace, VLLM_HELIX_TRACE): 1.00 means each served batch
cost what the profile says, so the rest of any gap is in the schedule (who waits for whom), not in the nodes' speed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_serving import PROMPT, load, warm_up  # noqa: E402
from cpu_cap import CpuCap  # noqa: E402

from vllm_helix.coordinator.drift import Expectation, Work  # noqa: E402
from vllm_helix.models.tiny import build_tiny_llama  # noqa: E402
from vllm_helix.planner.files import load_plan  # noqa: E402
from vllm_helix.trace import TRACE_ENV, read_rows  # noqa: E402
from vllm_helix.vllm_server import VllmServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NODE_ENV = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}  # as the local nodes run
# the plan's weights, as the simulator routes (and the capped node is capped after its start-up probe, which would
# otherwise call it as fast as the other)
SERVE = ["--max-model-len", "1024", "--max-num-batched-tokens", "512", "--max-num-seqs", "64", "--dtype", "float32",
         "--enforce-eager", "--helix-static-weights"]
HALF = 0.5  # of a core: the capped node


def cli(*args: object, cap: CpuCap | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "vllm_helix.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **NODE_ENV}, preexec_fn=cap.enter if cap else None)
    if done.returncode != 0:
        raise SystemExit(f"vllm-helix {args[0]} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def profile(model: Path, folder: Path, quick: bool) -> None:
    cli("profile", "--model", model, *(["--quick"] if quick else []), "--enforce-eager", "-o", folder / "cpu.json")


def plan(work: Path, model: Path, profiles: Path, cluster: Path, placement: Path) -> Path:
    out = work / "plan.yaml"
    cli("plan", "--cluster", cluster, "--model", model, "--profiles", profiles, "--placement", placement, "-o", out)
    return out


def predict(work: Path, plan_path: Path, cluster: Path, requests: int, prompt_tokens: int, max_tokens: int,
            earlier_model: bool = False, cores: float | None = None) -> dict:
    """The simulator's prediction; `cores`: the nodes share that many (default: the cluster's, all of this machine's);
    `earlier_model`: nodes batch what is queued, each on a core of its own."""
    trace = work / "trace.csv"
    with open(trace, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arrival_time_s", "input_tokens", "output_tokens"])
        writer.writerows([0.0, prompt_tokens, max_tokens] for _ in range(requests))
    steps = ["--helix-depth", "0", "--max-num-batched-tokens", serve_setting("--max-num-batched-tokens"),
             "--max-num-seqs", serve_setting("--max-num-seqs")]
    if earlier_model or cores is not None:
        plan_data = yaml.safe_load(plan_path.read_text())
        plan_data["cluster"].pop("host_cores", None)
        if earlier_model:
            steps = []
        else:
            plan_data["cluster"]["host_cores"] = {"local": cores}
        plan_path = work / ("plan-own-cores.yaml" if earlier_model else "plan-free-cores.yaml")
        plan_path.write_text(yaml.safe_dump(plan_data, sort_keys=False))
    report = json.loads(cli("simulate", "--plan", plan_path, "--cluster", cluster, "--mode", "online",
                            "--trace", trace, "--json", *steps))
    return {"tokens_per_s": requests * max_tokens / (report["last_finish_s"] - report["window_s"][0]),
            "ttft_s": report["prompt_latency"]["mean"], "tpot_s": report["decode_latency"]["mean"]}


def serve_setting(flag: str) -> str:
    return SERVE[SERVE.index(flag) + 1]


def local_cluster(name: str, nodes: list[dict], path: Path) -> Path:
    """A cluster of local nodes that share this machine's cores (what the simulator needs to know)."""
    path.write_text(yaml.safe_dump({
        "name": name, "coordinator": {"address": "local"}, "nodes": nodes,
        "default_link": {"bandwidth": "10Gbps", "latency": "0.1ms"}, "host_cores": {"local": os.cpu_count()}}))
    return path


def measure(work: Path, model: Path, plan_path: Path, requests: int, max_tokens: int, capped: dict[str, float],
            rounds: int) -> tuple[list[dict], int]:
    """Output tokens/s of the real cluster, one result per round, and the prompt's length in tokens."""
    from serve_helpers import local_worker, post

    trace = work / "trace"
    shutil.rmtree(trace, ignore_errors=True)
    server = VllmServer(model, ["--executor", "helix", "--helix-plan", str(plan_path), *SERVE],
                        env={**NODE_ENV, TRACE_ENV: str(trace)}, log_path=work / "serve.log")
    results = []
    with server as url:
        caps = [CpuCap(f"fidelity-{node}", share) for node, share in capped.items()]
        try:
            for cap, node in zip(caps, capped, strict=True):
                cap.add(local_worker(server, node).pid)
            body = {"model": str(model), "prompt": f"0. {PROMPT}", "max_tokens": 1}
            prompt_tokens = post(url, "/completions", body)["usage"]["prompt_tokens"]
            warm_up(url, str(model))
            for _ in range(rounds):
                before, busy, started = cpu_seconds(server.process.pid), machine_busy_s(), time.monotonic()
                window = [time.time()]
                result = load(url, str(model), requests, max_tokens)
                wall, after = time.monotonic() - started, cpu_seconds(server.process.pid)
                result["window"] = [*window, time.time()]
                result["cores"] = {part: (after[part] - before.get(part, 0.0)) / wall for part in after}
                others = (machine_busy_s() - busy) / wall - sum(result["cores"].values())  # other sessions' jobs
                result["free_cores"] = max(0.1, (os.cpu_count() or 1) - max(0.0, others))
                result["node_cpu_s"] = after["nodes"] - before["nodes"]
                results.append(result)
        finally:
            for cap in caps:
                cap.close()
    plan = load_plan(plan_path)  # after the server stopped: the nodes' last trace lines are on disk
    for result in results:
        result["cpu_per_profiled"] = result["node_cpu_s"] / profiled_seconds(trace, plan, *result["window"])
    return results, prompt_tokens


def profiled_seconds(trace: Path, plan, since: float, until: float) -> float:
    """Solo seconds the plan's profiles give for the batches the nodes' traces show started in [since, until]
    (the drift check's per-batch expectation: overhead + layers x per-layer time of the batch's shape, decodes at
    their context, as the simulator times them)."""
    total = 0.0
    for name in plan.placement.ranges:
        expect = Expectation(plan, name)
        for row in read_rows(trace / f"{name}.jsonl"):
            if since <= row["model"][0] <= until:
                work = Work(batches=1, tokens=row["tokens"], decode_seqs=row["decodes"])
                total += expect.seconds(work, row.get("context"))
    return total


def machine_busy_s() -> float:
    """CPU seconds this machine's cores have been busy (or stolen by the hypervisor) since boot, from /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(root_pid: int) -> dict[str, float]:
    """CPU seconds so far of `vllm serve`'s processes: the local nodes, and the rest (API server, engine core with
    the coordinator)."""
    import psutil

    out = {"nodes": 0.0, "coordinator": 0.0}
    root = psutil.Process(root_pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            times, command = process.cpu_times(), process.cmdline()
        except psutil.NoSuchProcess:
            continue
        part = "nodes" if "worker" in command and "--node" in command else "coordinator"
        out[part] += times.user + times.system
    return out


def _median(rounds: list[dict], *keys: str) -> float:
    """The median over rounds of r[keys[0]][keys[1]]..."""
    values = []
    for r in rounds:
        for key in keys:
            r = r[key]
        values.append(r)
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="loads served per setup (the table has the median)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size of the 8-layer random model")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick-profile", action="store_true", help="profile with the quick sweep (noisier)")
    which.add_argument("--profiles", type=Path, help="a folder with this machine's profile (cpu.json) of the "
                                                     "same model, taken before: skip profiling")
    opts = parser.parse_args()
    if not CpuCap.available():
        parser.error("the capped node needs root and a cgroup cpu controller")
    if opts.rounds < 1:
        parser.error("--rounds must be >= 1")
    if opts.profiles is not None and not (opts.profiles / "cpu.json").is_file():
        parser.error(f"--profiles {opts.profiles}: no cpu.json there")
    work = Path(tempfile.mkdtemp(prefix="helix-fidelity-"))
    model = build_tiny_llama(work / "model", hidden_size=opts.hidden, heads=opts.hidden // 64, kv_heads=4,
                             intermediate=opts.hidden * 11 // 4)
    profiles = opts.profiles
    if profiles is None:
        profiles = work / "profiles"
        profiles.mkdir()
        print(f"profiling {model.name} (hidden {opts.hidden}), load average {os.getloadavg()[0]:.2f}", flush=True)
        started = time.monotonic()
        profile(model, profiles, opts.quick_profile)
        print(f"profiled in {time.monotonic() - started:.0f} s", flush=True)

    chain, hetero = work / "a", work / "b"
    chain.mkdir()
    hetero.mkdir()
    local3 = yaml.safe_load((ROOT / "examples/local3-cluster.yaml").read_text())
    node = {"gpu": "cpu", "vram": "4GB", "address": "local"}
    (hetero / "placement.yaml").write_text(yaml.safe_dump({"fast": [0, 8], "slow": [0, 8]}))
    setups = [("(a) 3-node chain, local3-placement", chain,
               local_cluster("local3", local3["nodes"], chain / "cluster.yaml"),
               ROOT / "examples/local3-placement.yaml", {}),
              (f"(b) 2 replicas, `slow` capped at {HALF} core", hetero,
               local_cluster("replicas", [{"name": "fast", **node}, {"name": "slow", **node, "cpu_quota": HALF}],
                             hetero / "cluster.yaml"),
               hetero / "placement.yaml", {"slow": HALF})]
    rows = []
    for name, folder, cluster, placement, capped in setups:
        plan_path = plan(folder, model, profiles, cluster, placement)
        rounds, prompt_tokens = measure(folder, model, plan_path, opts.requests, opts.max_tokens, capped, opts.rounds)
        args = (folder, plan_path, cluster, opts.requests, prompt_tokens, opts.max_tokens)
        all_cores, earlier = predict(*args), predict(*args, earlier_model=True)
        for i, measured in enumerate(rounds, 1):
            # the cores the cluster had: this machine's, less what other jobs used meanwhile (a shared VM)
            measured["predicted"] = predict(*args, cores=measured["free_cores"])
            # diagnostic: the model leaves the coordinator's CPU (engine loop, API server) out; what would it
            # predict on the cores the nodes had once the coordinator took its share?
            nodes_only = predict(*args, cores=max(0.1, measured["free_cores"] - measured["cores"]["coordinator"]))
            used, free = measured["cores"], measured["free_cores"]
            print(f"{name}, round {i}: predicted {measured['predicted']['tokens_per_s']:.1f} on the {free:.2f} free "
                  f"cores (less the coordinator's: {nodes_only['tokens_per_s']:.1f}), measured "
                  f"{measured['tokens_per_s']:.1f} tokens/s; CPU / profiled {measured['cpu_per_profiled']:.2f} "
                  f"(CPU cores used: nodes {used['nodes']:.2f}, coordinator {used['coordinator']:.2f}, other jobs "
                  f"{(os.cpu_count() or 1) - free:.2f}; load average {os.getloadavg()[0]:.2f})", flush=True)
        print(f"{name}: on all {os.cpu_count()} cores {all_cores['tokens_per_s']:.1f}, earlier model "
              f"{earlier['tokens_per_s']:.1f} (prompt {prompt_tokens} tokens)", flush=True)
        rows.append((name, rounds))
    print(f"\n{opts.requests} concurrent requests x {opts.max_tokens} output tokens, {opts.rounds} rounds per setup; "
          "predicted / measured, medians (measured min-max)\n"
          "| setup | out tok/s | ratio | TTFT s | TPOT ms | CPU / profiled |\n|---|---|---|---|---|---|")
    for name, rounds in rows:
        tokens = [r["tokens_per_s"] for r in rounds]
        print(f"| {name} | {_median(rounds, 'predicted', 'tokens_per_s'):.1f} / {statistics.median(tokens):.1f} "
              f"({min(tokens):.1f}-{max(tokens):.1f}) | "
              f"{statistics.median(r['predicted']['tokens_per_s'] / r['tokens_per_s'] for r in rounds):.2f} | "
              f"{_median(rounds, 'predicted', 'ttft_s'):.2f} / {_median(rounds, 'ttft_s'):.2f} | "
              f"{1e3 * _median(rounds, 'predicted', 'tpot_s'):.1f} / {1e3 * _median(rounds, 'tpot_s'):.1f} | "
              f"{_median(rounds, 'cpu_per_profiled'):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
