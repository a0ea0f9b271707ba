"""Transport benchmark: the C++ endpoint and the pyzmq baseline side by side, same run, loopback TCP.

    .venv/bin/python bench/bench_transport.py            # full table (~1 min)
    .venv/bin/python bench/bench_transport.py --quick    # smaller counts

Sender and receiver are separate processes. Rates are measured at the receiver from the first
to the last message after a warm-up; one-way latency uses CLOCK_MONOTONIC (shared by both
processes) stamped into the header of paced messages.
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
        for i in range(count):
            ep.send("recv", Header("lat", meta={"t": time.monotonic_ns()}), [payload])
            t_next = time.monotonic() + 200e-6
            while time.monotonic() < t_next:
                pass
    else:
        hdr = _small_header(0)
        for _ in range(count):
            ep.send("recv", hdr, [payload])
    ctrl.recv()  # keep the endpoint open until everything arrived
    ep.close()


def run_case(impl: str, kind: str, size: int, count: int, warmup: int) -> dict[str, float]:
    ep = _make(impl, "recv")
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_sender, args=(impl, ep.address, kind, size, count + warmup, child))
    proc.start()
    lat: list[float] = []
    for _ in range(warmup):
        ep.recv(timeout=60)
    t0 = time.perf_counter()
    for _ in range(count):
        m = ep.recv(timeout=60)
        if kind == "latency":
            lat.append((time.monotonic_ns() - m.header.meta["t"]) / 1e3)
        del m
    dt = time.perf_counter() - t0
    parent.send("done")
    proc.join(60)
    ep.close()
    if kind == "latency":
        return {"p50_us": float(np.percentile(lat, 50)), "p99_us": float(np.percentile(lat, 99))}
    return {"msgs_per_s": count / dt, "gb_per_s": count * size / dt / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    q = 4 if args.quick else 1
    cases = [
        ("small 64 B hdr + 4 KiB", "rate", 4096, 200_000 // q, 5000),
        ("1 MiB tensors", "rate", 1 << 20, 3000 // q, 200),
        ("16 MiB tensors", "rate", 16 << 20, 300 // q, 20),
        ("latency 4 KiB, paced", "latency", 4096, 4000 // q, 200),
    ]
    rows = []
    for label, kind, size, count, warm in cases:
        res = {impl: run_case(impl, kind, size, count, warm) for impl in IMPLS}
        rows.append((label, kind, res))
    cpp, pz = IMPLS
    print(f"| case | {cpp} | pyzmq | ratio |")
    print("|---|---|---|---|")
    for label, kind, res in rows:
        a, b = res[cpp], res[pz]
        if kind == "latency":
            print(f"| {label} p50 | {a['p50_us']:.1f} µs | {b['p50_us']:.1f} µs | {b['p50_us'] / a['p50_us']:.2f}x |")
            print(f"| {label} p99 | {a['p99_us']:.1f} µs | {b['p99_us']:.1f} µs | {b['p99_us'] / a['p99_us']:.2f}x |")
        elif "small" in label:
            print(f"| {label} | {a['msgs_per_s']:,.0f} msg/s | {b['msgs_per_s']:,.0f} msg/s "
                  f"| {a['msgs_per_s'] / b['msgs_per_s']:.2f}x |")
        else:
            print(f"| {label} | {a['gb_per_s']:.2f} GB/s | {b['gb_per_s']:.2f} GB/s "
                  f"| {a['gb_per_s'] / b['gb_per_s']:.2f}x |")


if __name__ == "__main__":
    main()
