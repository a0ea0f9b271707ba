"""Transport benchmark: the C++ endpoint and the pyzmq baseline side by side, same run, loopback TCP.

    .venv/bin/python bench/bench_transport.py            # full table (~1-2 min)
    .venv/bin/python bench/bench_transport.py --quick    # smaller counts

Sender and receiver are separate processes. Rates are measured at the receiver from the first
to the last message after a warm-up; one-way latency uses CLOCK_MONOTONIC (shared by both
processes) stamped into the header of paced messages (one every 200 µs). Each case runs
--repeat times per implementation, alternating, and the best run is shown (the machine is shared).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np

from vllm_helix.comm import Endpoint, EndpointOptions, Header
from vllm_helix.comm.pyzmq_endpoint import PyzmqEndpoint

IMPLS = {"C++ (vllm_helix)": Endpoint, "pyzmq": PyzmqEndpoint}
_OPTS = EndpointOptions(peer_timeout_s=30.0, linger_s=30.0)


def _make(impl: str, name: str):
    cls = IMPLS[impl]
    return cls(name, options=_OPTS) if cls is Endpoint else cls(name)


def _small_header(i: int) -> Header:  # encodes to 64 bytes
    return Header("bench", request_ids=(f"req-{i:08d}",), meta={"pad": "x" * 33})


def _sender(impl: str, address: str, kind: str, size: int, count: int, ctrl) -> None:
    ep = _make(impl, "sender")
    ep.connect("recv", address)
    payload = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
    if kind == "latency":
        for _i in range(count):
            ep.send("recv", Header("lat", meta={"t": time.monotonic_ns()}), [payload])
            t_next = time.monotonic() + 200e-6
            while time.monotonic() < t_next:
                pass
    else:
        hdr = _small_header(0)
        c0 = time.process_time()
        for _ in range(count):
            ep.send("recv", hdr, [payload])
    ctrl.recv()  # everything arrived
    if kind != "latency":  # CPU of every thread of this process (I/O threads too) until then
        ctrl.send(time.process_time() - c0)
    ep.close()


def run_case(impl: str, kind: str, size: int, count: int, warmup: int) -> dict[str, float]:
    ep = _make(impl, "recv")
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_sender, args=(impl, ep.address, kind, size, count + warmup, child))
    proc.start()
    lat: list[float] = []
    for _ in range(warmup):
        ep.recv(timeout=60)
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "batch":
        got = 0
        while got < count:
            got += len(ep.recv_many(256, timeout=60))
    else:
        for _ in range(count):
            m = ep.recv(timeout=60)
            if kind == "latency":
                lat.append((time.monotonic_ns() - m.header.meta["t"]) / 1e3)
            del m
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    parent.send("done")
    if kind != "latency":
        cpu += parent.recv()
    proc.join(60)
    ep.close()
    if kind == "latency":
        return {"p50_us": float(np.percentile(lat, 50)), "p99_us": float(np.percentile(lat, 99))}
    n = count + warmup  # the sender's CPU covers the warm-up too: close enough, same for both
    return {"msgs_per_s": count / dt, "gb_per_s": count * size / dt / 1e9, "cpu_us": cpu / n * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a quarter of the messages")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case and implementation (best is shown)")
    args = ap.parse_args()
    q = 4 if args.quick else 1
    cases = [
        ("small 64 B hdr + 4 KiB, recv()", "rate", 4096, 200_000 // q, 5000),
        ("small 64 B hdr + 4 KiB, recv_many()", "batch", 4096, 200_000 // q, 5000),
        ("1 MiB tensors", "rate", 1 << 20, 3000 // q, 200),
        ("16 MiB tensors", "rate", 16 << 20, 300 // q, 20),
        ("latency 4 KiB, paced", "latency", 4096, 4000 // q, 200),
    ]
    rows = []
    for label, kind, size, count, warm in cases:
        runs: dict[str, list[dict[str, float]]] = {impl: [] for impl in IMPLS}
        for _ in range(args.repeat):  # alternate implementations; keep each one's best run
            for impl in IMPLS:
                runs[impl].append(run_case(impl, kind, size, count, warm))
        best = {impl: min(r, key=lambda x: x.get("p50_us", -x.get("msgs_per_s", 0))) for impl, r in runs.items()}
        rows.append((label, kind, best))
    cpp, pz = IMPLS
    print(f"| case | {cpp} | pyzmq | ratio | CPU µs/msg (both processes) C++ / pyzmq |")
    print("|---|---|---|---|---|")
    for label, kind, res in rows:
        a, b = res[cpp], res[pz]
        if kind == "latency":
            print(f"| {label} p50 | {a['p50_us']:.1f} µs | {b['p50_us']:.1f} µs | {b['p50_us'] / a['p50_us']:.2f}x | |")
            print(f"| {label} p99 | {a['p99_us']:.1f} µs | {b['p99_us']:.1f} µs | {b['p99_us'] / a['p99_us']:.2f}x | |")
        elif "small" in label:
            print(
                f"| {label} | {a['msgs_per_s']:,.0f} msg/s | {b['msgs_per_s']:,.0f} msg/s "
                f"| {a['msgs_per_s'] / b['msgs_per_s']:.2f}x | {a['cpu_us']:.1f} / {b['cpu_us']:.1f} |"
            )
        else:
            print(
                f"| {label} | {a['gb_per_s']:.2f} GB/s | {b['gb_per_s']:.2f} GB/s "
                f"| {a['gb_per_s'] / b['gb_per_s']:.2f}x | {a['cpu_us']:.0f} / {b['cpu_us']:.0f} |"
            )


if __name__ == "__main__":
    main()
