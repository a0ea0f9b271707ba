"""Serving benchmark: five setups side by side, interleaved rounds, median and spread (README "Serving benchmark").

    .venv/bin/python bench/bench_serving.py [--requests 32] [--max-tokens 48] [--rounds 3] [--setups a,b,c,b*,d]

Model: a local random Llama (8 layers, hidden 2048 by default). This machine has 2 CPU cores; each stage/node is
pinned to its own core (vLLM's VLLM_CPU_OMP_THREADS_BIND for its pipeline ranks, `taskset` for Helix
workers), so the two stages really run in parallel:

(a) plain vLLM, one engine on both cores;
(b) vLLM pipeline parallelism, 2 stages, layers [0,4) [4,8);
(c) Helix, 2 nodes with the same split; (ca), not run by default: the same with async scheduling (--helix-async);
(d) heterogeneous: the second machine is half as fast — the process on core 1 (vLLM's PP rank 1 in (b*),
    Helix node 1 in (d)) is capped at half a core by a CPU cgroup (a hard cap, like a slower GPU; where
    cgroups are not writable, a busy loop on core 1 shares it instead). vLLM PP keeps the even split (b*);
    Helix (d) serves the placement its planner chose for a cluster that says node 1 is half as fast; its
    routing weights follow the nodes' measured speed. (d0), not run by default: the same with the plan's
    weights only (--helix-static-weights). (dp), not run by default: as a user would, `vllm-helix profile` of
    each machine where its node runs (core 0 as `cpu`, core 1 slowed as `cpu-half`; once per run, ~3 min), and
    the plan made from those profiles: its numbers are measured, so the routes also follow the measured speed.
    The Helix rows show how many measured requests each first node took.

Each round runs every setup once, in that order, so slow phases of a shared machine hit all setups alike;
the table shows each setup's median over the rounds and the spread (min-max). The Helix setups run with
per-step tracing (VLLM_HELIX_TRACE, vllm_helix/trace.py) and the per-hop table shows where a hop's time
goes besides the model's forward. The load average is printed with each round: compare runs only at
similar load. Each row also gives the CPU that the processes serving it used per output token (`CPU ms/tok`: API
server, engine core, PP ranks or Helix nodes; not the load's client) and the cores that kept busy on average
(`cores`). Helix nodes sleep while they wait for a step, so cores short of the machine's are the ring's latency;
vLLM's PP ranks poll for theirs, so PP's CPU includes waiting (docs/hot_path.md, "CPU per token").

On a CUDA machine the same command runs the setups the machine can host: every engine and node on the GPU(s),
(b) only with 2 GPUs, and not the "half a CPU" setups (b*, d, dp, d0), whose CPU cap does not make a GPU slower.
There each Helix node is pinned to half the machine's cores, as a GPU host gives its worker several.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import yaml

from vllm_helix.coordinator.local_nodes import free_port
from vllm_helix.models.tiny import build_tiny_llama
from vllm_helix.trace import TRACE_ENV, format_summary, summarize
from vllm_helix.vllm_server import VllmServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cpu_cap import CpuCap  # noqa: E402
from netns_hosts import NetnsHosts  # noqa: E402

MAX_MODEL_LEN = 1024
PROMPT_TOKENS_AT_MOST = 256  # PROMPT is ~180 tokens in the tiny model's tokenizer; room for the label
COMMON = ["--max-model-len", str(MAX_MODEL_LEN), "--max-num-batched-tokens", "512", "--max-num-seqs", "64",
          "--dtype", "float32"]
PROMPT = "Large language models are served on clusters of graphics processors connected by networks. " * 4


def load(url: str, model: str, requests: int, max_tokens: int, label: str = "") -> dict[str, float]:
    """`requests` concurrent streaming completions: output tokens/s, mean TTFT and TPOT. Prompt i starts with
    `label` and i, so no two share a first KV block."""

    def one(i: int) -> tuple[float, float, int]:
        body = {"model": model, "prompt": f"{label}{i}. {PROMPT}", "max_tokens": max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True}
        request = urllib.request.Request(url + "/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        start, first, tokens = time.monotonic(), None, 0
        with urllib.request.urlopen(request, timeout=600) as response:
            for line in response:
                if line.startswith(b"data: {"):
                    tokens += 1
                    first = first or time.monotonic()
        end = time.monotonic()
        return first - start, (end - first) / max(tokens - 1, 1), tokens

    start = time.monotonic()
    with cf.ThreadPoolExecutor(requests) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.monotonic() - start
    tokens = sum(r[2] for r in results)
    return {"tokens": tokens, "tokens_per_s": tokens / wall, "ttft_s": statistics.mean(r[0] for r in results),
            "tpot_s": statistics.mean(r[1] for r in results)}


def cpu_by_process(pids: list[int], *, roots: bool = True) -> dict[int, float]:
    """CPU seconds used so far by each descendant of these processes (and by the processes, if `roots`), threads
    included."""
    seconds = {}
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            processes = root.children(recursive=True)
            if roots:
                processes.append(root)
            for process in processes:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = process.cpu_times()
                    seconds[process.pid] = times.user + times.system
    return seconds


def served_cpu() -> dict[int, float]:
    """CPU seconds used so far by each process this benchmark started (API server, engine core, PP ranks, Helix
    nodes), not by the load's own client threads, which run in this process."""
    return cpu_by_process([os.getpid()], roots=False)


def cpu_used_s(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two `cpu_by_process` readings, of the processes seen in both: a process missed in the
    first (or started since) would add all the CPU of its life, not what it used in between."""
    return sum(after[pid] - before[pid] for pid in after.keys() & before.keys())


def warm_up(url: str, model: str) -> None:
    """A few short requests before a measured load, with prompts of their own: vLLM's prefix cache (on in the
    plain vLLM and PP setups, off under Helix, whose nodes hold the KV) must not skip measured prompt tokens."""
    load(url, model, 4, 4, label="warm-up ")


@contextlib.contextmanager
def half_speed_core(core: int):
    """Yields `slow(pid)`, which caps a process at half a CPU (a cgroup CFS quota: tests/cpu_cap.py). Without
    writable cgroups, `slow` does nothing and a busy loop pinned to `core` halves that core for everything on it."""
    if CpuCap.available():
        with CpuCap("bench-slow", 0.5) as cap:
            yield cap.add
        return
    print(f"(no writable cgroup: a busy loop on core {core} emulates the slow machine)")
    hog = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", "while True: pass"])
    try:
        yield lambda pid: None
    finally:
        hog.kill()
        hog.wait()


def pid_of(pattern: str) -> int:
    return int(subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=True).stdout.split()[0])


def measured_profiles(model: Path, folder: Path, slow) -> Path:
    """`vllm-helix profile` of both machines of (dp), each where its node runs (the quick sweep, ~1 and ~2 min):
    core 0 at full speed as gpu `cpu`, core 1 slowed as for (d) as gpu `cpu-half`."""
    folder.mkdir(parents=True, exist_ok=True)
    for core, gpu in ((0, "cpu"), (1, "cpu-half")):
        if (folder / f"{gpu}.json").exists():
            continue
        argv = ["taskset", "-c", str(core), sys.executable, "-m", "vllm_helix.cli", "profile", "--model", str(model),
                "--quick", "--enforce-eager", "--gpu", gpu, "-o", str(folder / f"{gpu}.json")]
        with open(folder / f"{gpu}.log", "w") as log:
            profiler = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                        env=dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=str(core)))
        if core == 1:
            slow(profiler.pid)
        if profiler.wait() != 0:
            raise SystemExit(f"profiling {gpu} failed: {(folder / f'{gpu}.log').read_text()[-2000:]}")
    return folder


@contextlib.contextmanager
def helix_workers(workdir: Path, model: Path, split: list[tuple[int, int]], speeds: list[int], opts, slow=None,
                  env: dict[str, str] | None = None, profiles: Path | None = None, site=None):
    """A plan for two pinned workers on 127.0.0.1 (started here, like remote hosts), and the workers. With
    `profiles`, nodes 0 and 1 are the profiled `cpu` and `cpu-half` machines; else `cpu` with `speeds` as GPUs.
    With `site` (a tests/netns_hosts.py Host), both workers run in that network namespace, behind its shaped link
    to the coordinator, and talk to each other inside it (plain TCP: --helix-insecure)."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(3)]
    here, there = (site.gateway, site.address) if site else ("127.0.0.1", "127.0.0.1")
    gpus = [("cpu", 1), ("cpu-half", 1)] if profiles else [("cpu", speeds[0]), ("cpu", speeds[1])]
    cluster = {"name": "bench", "coordinator": {"address": f"{here}:{ports[0]}"},
               "nodes": [{"name": f"node{i}", "gpu": gpus[i][0], "gpus": gpus[i][1], "tp": 1, "vram": "8GB",
                          "address": f"{there}:{ports[i + 1]}"} for i in range(2)],
               "default_link": {"bandwidth": "10Gbps", "latency": "0.1ms"}}
    (workdir / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    plan = workdir / "plan.yaml"
    if split:
        (workdir / "placement.yaml").write_text(yaml.safe_dump({f"node{i}": list(r) for i, r in enumerate(split)}))
        extra = ["--placement", str(workdir / "placement.yaml")]
    else:
        extra = ["--method", "milp", "--time-limit", "10"]
    numbers = ["--profiles", str(profiles)] if profiles else ["--throughput", "estimate"]
    subprocess.run([sys.executable, "-m", "vllm_helix.cli", "plan", "--cluster", str(workdir / "cluster.yaml"),
                    "--model", str(model), *numbers, "-o", str(plan), *extra],
                   check=True, capture_output=True)
    layers = [n["layers"] for n in yaml.safe_load(plan.read_text())["nodes"]]
    workers = []
    for i in range(2):
        argv = [*(site.command() if site else []), "taskset", "-c", opts.node_cores[i], sys.executable, "-m",
                "vllm_helix.cli", "worker", "--plan", str(plan), "--node", f"node{i}", "--model", str(model),
                "--kv-fraction", "0.02", "--max-model-len", str(MAX_MODEL_LEN), "--dtype", "float32",
                "--max-num-batched-tokens", "512", "--max-num-seqs", "64", *opts.eager,
                *(["--helix-insecure"] if site else [])]
        with open(workdir / f"node{i}.log", "w") as log:
            workers.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            env=dict(os.environ, **(env or {}), VLLM_CPU_OMP_THREADS_BIND=str(i))))
    if slow is not None:
        slow(workers[1].pid)  # taskset execs the worker: same pid
    try:
        yield plan, layers
    finally:
        for w in workers:
            w.terminate()
            w.wait(30)


def first_nodes(route_log: Path) -> list[str]:
    """The first node of each route in a `--helix-route-log` file, in order."""
    lines = route_log.read_text().splitlines() if route_log.exists() else []
    return [line.split(" -> ")[1].split()[0] for line in lines]


def run(name: str, model: Path, args: list[str], env: dict[str, str], opts, workdir: Path, started=None) -> dict:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", name.split(")")[0])
    routes = workdir / f"{slug}.routes"
    routes.unlink(missing_ok=True)
    if "helix" in args:
        args = [*args, "--helix-route-log", str(routes)]
    with VllmServer(model, [*COMMON, *opts.eager, *args], env=env, log_path=workdir / f"{slug}.log") as url:
        if started is not None:
            started()
        warm_up(url, str(model))
        measured = time.time()  # the per-hop table covers the measured load only
        before = len(first_nodes(routes))
        start, cpu0 = time.monotonic(), served_cpu()
        result = load(url, str(model), opts.requests, opts.max_tokens)
        cpu_s = cpu_used_s(cpu0, served_cpu())
        result["cpu_ms_per_token"] = cpu_s * 1e3 / result["tokens"]
        # over the span of both readings, scans included: the load's own wall time is shorter than what they cover
        result["busy_cores"] = cpu_s / (time.monotonic() - start)
        result["since"] = measured
        if TRACE_ENV in env:
            time.sleep(1.0)  # traced processes flush their last lines once idle, before the server stops
    taken = first_nodes(routes)[before:]
    split = "  routes: " + ", ".join(f"{n} {taken.count(n)}" for n in sorted(set(taken))) if taken else ""
    print(f"{name:<52}{result['tokens_per_s']:>10.1f}{result['ttft_s']:>10.2f}{result['tpot_s'] * 1e3:>10.1f}"
          f"{result['cpu_ms_per_token']:>12.1f}{result['busy_cores']:>8.2f}{split}", flush=True)
    return result


def cuda_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def node_cores(gpus: int) -> list[str]:
    """The cores each of the two Helix nodes is pinned to: one each on the CPU (the core is the node's machine);
    half the machine each on CUDA, where a node's cores only feed its GPU and run its transport threads."""
    half = (os.cpu_count() or 2) // 2
    if not gpus or half < 2:
        return ["0", "1"]
    return [f"0-{half - 1}", f"{half}-{2 * half - 1}"]


def unavailable(setup: str, gpus: int, eager: bool) -> str | None:
    """Why `setup` cannot run on this machine (see the module's docstring on CUDA machines) or eagerly, or None."""
    if eager and setup in ("b", "b*"):
        return "vLLM 0.32's pipeline parallelism fails under --enforce-eager (its intermediate_tensors stay None)"
    if gpus and setup in ("b*", "d", "dp", "d0"):
        return "a CPU cap does not slow a GPU"
    if gpus == 1 and setup == "b":
        return "pipeline parallelism needs 2 GPUs"
    return None


def one_round(want: set[str], model: Path, opts, workdir: Path) -> tuple[dict[str, dict], dict[str, Path]]:
    """Every wanted setup once; returns their results and the trace folders of the Helix setups."""
    pp = {"VLLM_PP_LAYER_PARTITION": "4,4", "VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    pp_args = ["--pipeline-parallel-size", "2", "--distributed-executor-backend", "mp"]
    helix = ["--executor", "helix", "--helix-depth", str(opts.helix_depth)]
    # --coordinator-delay-ms: (c) and (ca) serve from a site behind a slow link (plain TCP there, as between hosts)
    same_split = [*helix, "--helix-insecure"] if opts.site else helix
    traces = {s: workdir / f"trace-{s}" for s in ("c", "ca", "d")}
    for trace in traces.values():
        shutil.rmtree(trace, ignore_errors=True)
    rows = {}
    if "a" in want:
        rows["a"] = run("(a) plain vLLM, 1 engine", model, [], {"VLLM_CPU_OMP_THREADS_BIND": "0-1"}, opts, workdir)
    if "b" in want:
        rows["b"] = run("(b) vLLM PP=2, [0,4) [4,8)", model, pp_args, pp, opts, workdir)
    for setup, name, extra in (("c", "(c) Helix 2 nodes, [0,4) [4,8)", []),
                               ("ca", "(ca) Helix 2 nodes, [0,4) [4,8), async scheduling", ["--helix-async"])):
        if setup in want:
            trace = {TRACE_ENV: str(traces[setup])}
            with helix_workers(workdir / setup, model, [(0, 4), (4, 8)], [1, 1], opts, env=trace,
                               site=opts.site) as (plan, _):
                rows[setup] = run(name, model, [*same_split, "--helix-plan", str(plan), *extra], trace, opts,
                                  workdir)
    with half_speed_core(1) as slow:
        if "b*" in want:
            rows["b*"] = run("(b*) vLLM PP=2 even split, rank 1 at 1/2", model, pp_args, pp, opts, workdir,
                             started=lambda: slow(pid_of("VLLM::Worker_PP1")))
        if "d" in want:
            trace = {TRACE_ENV: str(traces["d"])}
            with helix_workers(workdir / "d", model, [], [2, 1], opts, slow, env=trace) as (plan, layers):
                rows["d"] = run(f"(d) Helix planned {layers}, node 1 at 1/2", model,
                                [*helix, "--helix-plan", str(plan)], trace, opts, workdir)
        if "dp" in want:
            profiles = measured_profiles(model, opts.profiles or workdir / "profiles", slow)
            with helix_workers(workdir / "dp", model, [], [], opts, slow, profiles=profiles) as (plan, layers):
                rows["dp"] = run(f"(dp) Helix planned {layers} from profiles, node 1 at 1/2", model,
                                 [*helix, "--helix-plan", str(plan)], {}, opts, workdir)
        if "d0" in want:
            with helix_workers(workdir / "d0", model, [], [2, 1], opts, slow) as (plan, layers):
                rows["d0"] = run("(d0) as (d), the plan's weights only", model,
                                 [*helix, "--helix-plan", str(plan), "--helix-static-weights"], {}, opts, workdir)
    return rows, {s: t for s, t in traces.items() if s in rows}


NAMES = {"a": "(a) plain vLLM, 1 engine", "b": "(b) vLLM PP=2, [0,4) [4,8)", "c": "(c) Helix 2 nodes, same split",
         "ca": "(ca) as (c), async scheduling (--helix-async)",
         "b*": "(b*) vLLM PP=2 even split, rank 1 at 1/2", "d": "(d) Helix planned, node 1 at 1/2",
         "dp": "(dp) Helix planned from measured profiles, node 1 at 1/2", "d0": "(d0) as (d), static weights"}


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """median [min-max]"""
    m, lo, hi = (scale * v for v in (statistics.median(values), min(values), max(values)))
    return f"{m:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def report(results: dict[str, list[dict]], hop_tables: dict[str, list[dict]]) -> None:
    rounds = max(len(v) for v in results.values())
    print(f"\nmedian [min-max] over {rounds} interleaved round(s)")
    print("| setup | out tok/s | TTFT s | TPOT ms | CPU ms/tok | cores |\n|---|---|---|---|---|---|")
    for setup, rows in results.items():
        column = {key: [r[key] for r in rows] for key in rows[0]}
        print(f"| {NAMES[setup]} | {spread(column['tokens_per_s'])} | {spread(column['ttft_s'], digits=2)} | "
              f"{spread(column['tpot_s'], 1e3)} | {spread(column['cpu_ms_per_token'])} | "
              f"{spread(column['busy_cores'], digits=2)} |")
    for ours, theirs in (("c", "b"), ("ca", "b"), ("ca", "c"), ("d", "b*"), ("dp", "b*"), ("d0", "b*")):
        if ours in results and theirs in results:
            pairs = zip(results[ours], results[theirs], strict=True)
            per_round = [o["tokens_per_s"] / t["tokens_per_s"] for o, t in pairs]
            median = (statistics.median(r["tokens_per_s"] for r in results[ours])
                      / statistics.median(r["tokens_per_s"] for r in results[theirs]))
            print(f"({ours})/({theirs}) = {median:.2f} (medians); per round "
                  + ", ".join(f"{r:.2f}" for r in per_round))
    for setup, summaries in hop_tables.items():
        print(f"\nper-hop trace of {NAMES[setup]}, last round:")
        print(format_summary(summaries[-1]))
        print("per-hop overhead by round (median ms): "
              + ", ".join(f"{s['hop_overhead_ms']:.2f}" for s in summaries))
        ring = setup == "ca"  # async scheduling: the ring, not the coordinator's cycle
        print(f"{'async ring' if ring else 'decode step cycle'} by round (mean ms, the forwards + all else): "
              f"{cycles_by_round(summaries, ring)}")


def cycles_by_round(summaries: list[dict], ring: bool = False) -> str:
    """Each round's mean decode step cycle, or async ring (vllm_helix/trace.py), as `forwards + the rest`: a round
    whose throughput stands out shows whether its forwards or its hops and queues made the difference."""
    parts = []
    for summary in summaries:
        cycle = summary["ring" if ring else "cycle"]
        parts.append(f"{cycle['compute']:.1f} + {sum(cycle.values()) - cycle['compute']:.1f}" if cycle else "-")
    return ", ".join(parts)


def bad_load(opts: argparse.Namespace) -> str | None:
    """What is wrong with the load or model asked for, before anything starts (None: nothing)."""
    longest = MAX_MODEL_LEN - PROMPT_TOKENS_AT_MOST
    if not 1 <= opts.rounds <= 20:
        return f"--rounds from 1 to 20; got {opts.rounds}"
    if not 1 <= opts.requests <= 1024 or not 1 <= opts.max_tokens <= longest:
        return (f"--requests from 1 to 1024 and --max-tokens from 1 to {longest} (a prompt and its output fit the "
                f"servers' {MAX_MODEL_LEN}-token context); got {opts.requests} and {opts.max_tokens}")
    if not 256 <= opts.hidden <= 8192 or opts.hidden % 256:
        return (f"--hidden must be a multiple of 256 (64-wide heads in groups of 4 per KV head) up to 8192; "
                f"got {opts.hidden}")
    if opts.helix_depth < 0:
        return f"--helix-depth must be 0 (auto) or more; got {opts.helix_depth}"
    if not 0 <= opts.coordinator_delay_ms <= 1000:
        return f"--coordinator-delay-ms from 0 to 1000; got {opts.coordinator_delay_ms}"
    return None


def bad_site(opts: argparse.Namespace, want: set[str]) -> str | None:
    """--coordinator-delay-ms moves (c) and (ca) into a network namespace: it needs one of them, root and iproute2."""
    if not opts.coordinator_delay_ms:
        return None
    if not want & {"c", "ca"}:
        return "--coordinator-delay-ms is for setups c and ca (add one to --setups)"
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("tc")):
        return "--coordinator-delay-ms needs root and iproute2 (ip, tc): the nodes' site is a network namespace"
    return None


def bad_profiles(opts: argparse.Namespace, want: set[str]) -> str | None:
    """--profiles is a folder of an earlier run, for (dp) only."""
    if opts.profiles is None:
        return None
    if "dp" not in want:
        return "--profiles is for setup dp (add it to --setups)"
    if not opts.profiles.is_dir():
        return f"--profiles {opts.profiles}: not a folder (give the one an earlier run of (dp) wrote its profiles to)"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all setups")
    parser.add_argument("--setups", default="a,b,c,b*,d",
                        help="which of a, b, c, ca, b*, d, dp, d0 to run (ca: (c) with --helix-async; dp: (d) "
                             "planned from profiles of both machines; d0: (d) with --helix-static-weights)")
    parser.add_argument("--profiles", type=Path, help="for (dp): a folder with the cpu.json and cpu-half.json of an "
                        "earlier run of this script (same --hidden), instead of profiling again")
    parser.add_argument("--hidden", type=int, default=2048, help="hidden size of the 8-layer random model")
    parser.add_argument("--helix-depth", type=int, default=0, help="--helix-depth for (c) and (d); 0 = auto")
    parser.add_argument("--coordinator-delay-ms", type=float, default=0.0,
                        help="(c) and (ca) only: both nodes in one network namespace (a site) whose link to the "
                             "coordinator delays each way this long (netem; needs root): the API server far from "
                             "the GPUs")
    parser.add_argument("--enforce-eager", dest="eager", action="store_const", const=["--enforce-eager"], default=[],
                        help="eager layers in every engine and node (default: vLLM's torch.compile and, on CUDA, "
                             "its CUDA graphs)")
    opts = parser.parse_args()
    want = {s.strip() for s in opts.setups.split(",")}
    if not want <= set(NAMES):
        parser.error(f"--setups takes a comma-separated subset of {', '.join(NAMES)}; got {opts.setups!r}")
    if problem := bad_load(opts) or bad_profiles(opts, want) or bad_site(opts, want):
        parser.error(problem)
    gpus = cuda_gpus()
    opts.node_cores = node_cores(gpus)
    print(f"on {gpus} CUDA GPU(s)" if gpus else f"on {os.cpu_count()} CPU cores")
    for setup in sorted(want):
        if reason := unavailable(setup, gpus, bool(opts.eager)):
            print(f"skipping {NAMES[setup]}: {reason}")
            want.discard(setup)
    if not want:
        parser.error("none of --setups runs on this machine")
    with contextlib.ExitStack() as stack:
        opts.site = far_site(opts.coordinator_delay_ms, stack)
        return bench(want, opts)


def far_site(delay_ms: float, stack: contextlib.ExitStack):
    """A network namespace behind a link that delays each way by `delay_ms` (None for 0), removed on exit."""
    if delay_ms <= 0:
        return None
    hosts = NetnsHosts()
    stack.callback(hosts.close)
    site = hosts.make("1gbit", delay_ms)
    if not site.shaping.startswith("netem"):
        raise SystemExit(f"bench_serving.py: --coordinator-delay-ms: this kernel has no netem ({site.shaping}), so "
                         "the link cannot be delayed")
    print(f"(c) and (ca) nodes at {site.address}, the coordinator at {site.gateway}, link {site.shaping} each way")
    return site


def bench(want: set[str], opts) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="helix-bench-"))
    model = build_tiny_llama(workdir / "model", hidden_size=opts.hidden, heads=opts.hidden // 64, kv_heads=4,
                             intermediate=opts.hidden * 11 // 4)
    print(f"{opts.requests} concurrent requests x {opts.max_tokens} output tokens, prompt ~{len(PROMPT.split())} words")
    results: dict[str, list[dict]] = {s: [] for s in NAMES if s in want}
    hop_tables: dict[str, list[dict]] = {}
    for i in range(opts.rounds):
        print(f"\nround {i + 1}/{opts.rounds}, load average {os.getloadavg()[0]:.2f}")
        print(f"{'setup':<52}{'out tok/s':>10}{'TTFT s':>10}{'TPOT ms':>10}{'CPU ms/tok':>12}{'cores':>8}")
        rows, traces = one_round(want, model, opts, workdir)
        for setup, row in rows.items():
            results[setup].append(row)
        for setup, trace in traces.items():
            hop_tables.setdefault(setup, []).append(summarize(trace, since=rows[setup]["since"]))
    report(results, hop_tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())
