"""Scale-out: `vllm serve` start-up with the Ray launcher vs local launch, and `vllm-helix discover` vs netem.

    sudo .venv/bin/python bench/bench_scaleout.py [--skip-serve] [--skip-discover] [--rates 200mbit,100mbit,50mbit]
                                                  [--delays 2,5,10]

(a) Start-up: the tiny 8-layer Llama on the 3-node branching plan of the serving tests (head [0, 2) -> fast |
    slow [2, 8)), served once with `--helix-launcher local` (subprocess workers) and once with `--helix-launcher
    ray` on a local Ray cluster of three Ray nodes (one `helix_node:` resource each; CURVE keys, since Ray's
    addresses are not loopback). Reports seconds from `vllm serve` to a server that answers /health, and the
    Ray cluster's own start-up (paid once, before any `vllm serve`).
(b) Discovery (needs root): three hosts in network namespaces, host i joined to the root namespace by a link of
    rate r_i and delay d_i each way (tests/netns_hosts.py; tbf without delay on kernels without netem); the
    coordinator end of `vllm-helix discover --hosts` in the root namespace. Reports the probe's wall time and
    every directed link's measured bandwidth and latency beside the configured ones.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from netns_hosts import NetnsHosts  # noqa: E402
from serve_helpers import COMMON, write_plan  # noqa: E402

from vllm_helix.models.tiny import build_tiny_llama  # noqa: E402
from vllm_helix.planner.files import load_cluster  # noqa: E402
from vllm_helix.vllm_server import VllmServer  # noqa: E402

CLI = [sys.executable, "-m", "vllm_helix.cli"]
NODES = ["head", "fast", "slow"]


def serve_seconds(model: Path, plan: Path, launcher: str, log: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    with VllmServer(model, ["--executor", "helix", "--helix-plan", str(plan), "--helix-launcher", launcher,
                            *COMMON], log_path=log, env=env, timeout_s=1200):
        return time.monotonic() - started


def bench_startup(work: Path) -> list[tuple[str, str]]:
    import ray
    from ray.cluster_utils import Cluster

    model = build_tiny_llama(work / "model")
    rows = []
    local = work / "local"
    local.mkdir()
    seconds = serve_seconds(model, write_plan(local, model), "local", local / "s.log", {})
    rows.append(("local (subprocesses)", f"{seconds:.1f}"))
    started = time.monotonic()
    small = {"num_cpus": 1, "object_store_memory": 80 << 20}
    cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False,
                                                            "resources": {f"helix_node:{NODES[0]}": 1}})
    try:
        for name in NODES[1:]:
            cluster.add_node(**small, resources={f"helix_node:{name}": 1})
        cluster.wait_for_nodes()
        ray_up = time.monotonic() - started
        on_ray = work / "ray"
        on_ray.mkdir()
        plan = write_plan(on_ray, model)
        subprocess.run([*CLI, "keys", "--plan", str(plan)], check=True, capture_output=True)
        seconds = serve_seconds(model, plan, "ray", on_ray / "s.log", {"RAY_ADDRESS": cluster.address})
        rows.append(("ray (actors on 3 Ray nodes)", f"{seconds:.1f}"))
        rows.append(("  Ray cluster start (once)", f"{ray_up:.1f}"))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    return rows


def bench_discover(work: Path, rates: list[str], delays: list[float]) -> tuple[float, str, list[tuple[str, ...]]]:
    hosts = NetnsHosts()
    probes: list[subprocess.Popen] = []
    try:
        made = [hosts.make(rate, delay) for rate, delay in zip(rates, delays, strict=True)]
        netem = all(h.shaping.startswith("netem") for h in made)
        for i, host in enumerate(made):
            probes.append(subprocess.Popen(host.command(*CLI, "worker", "--probe", "--bind", f"{host.address}:7100",
                                                        "--node", f"h{i + 1}"), stderr=subprocess.PIPE, text=True))
            probes[-1].stderr.readline()  # listening
        started = time.monotonic()
        out = work / "discovered.yaml"
        subprocess.run([*CLI, "discover", "--hosts", ",".join(f"{h.address}:7100" for h in made), "-o", str(out)],
                       check=True, capture_output=True)
        seconds = time.monotonic() - started
    finally:
        for probe in probes:
            probe.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                probe.wait(10)
        hosts.close()
    rate = {"coordinator": float("inf")} | {f"h{i + 1}": float(r.removesuffix("mbit")) for i, r in enumerate(rates)}
    delay = {"coordinator": 0.0} | {f"h{i + 1}": d if netem else 0.0 for i, d in enumerate(delays)}
    rows = []
    for link in load_cluster(out).links:
        set_bw, got_bw = min(rate[link.src], rate[link.dst]), link.bandwidth_bytes_per_s * 8e-6
        set_lat, got_lat = delay[link.src] + delay[link.dst], link.latency_s * 1e3
        lat_err = f"{100 * (got_lat - set_lat) / set_lat:+.0f}%" if set_lat else "-"
        rows.append((f"{link.src} -> {link.dst}", f"{set_bw:.0f}", f"{got_bw:.1f}",
                     f"{100 * (got_bw - set_bw) / set_bw:+.1f}%", f"{set_lat:.2f}", f"{got_lat:.2f}", lat_err))
    return seconds, made[0].shaping.split(" rate")[0], rows


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                                   strict=True)))
                     for r in [header, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--skip-discover", action="store_true")
    parser.add_argument("--rates", default="200mbit,100mbit,50mbit")
    parser.add_argument("--delays", default="2,5,10", help="one-way delay of each host's link, ms")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        work = Path(tmp)
        if not args.skip_serve:
            print("(a) `vllm serve` to ready, 3-node plan, tiny Llama")
            print(table(("launcher", "seconds"), bench_startup(work)), flush=True)
        if not args.skip_discover:
            if os.geteuid() != 0:
                sys.exit("(b) needs root (network namespaces); rerun with sudo or --skip-discover")
            seconds, shaper, rows = bench_discover(work, args.rates.split(","),
                                                   [float(d) for d in args.delays.split(",")])
            print(f"\n(b) vllm-helix discover --hosts on 3 netns hosts ({shaper} links): {seconds:.1f} s for "
                  f"{len(rows)} links" + ("" if shaper == "netem" else "; no netem in this kernel: no delay set"))
            print(table(("link", "set Mbit/s", "measured", "error", "set ms", "measured", "error"), rows))


if __name__ == "__main__":
    main()
