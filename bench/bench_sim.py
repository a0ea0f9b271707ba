"""Simulator benchmark: S1 (spec §8.3) cost and the improved scheduler, each run in a fresh subprocess.

    python bench/bench_sim.py            # prints a table (wall/CPU seconds, peak RSS, throughput, latencies)
    python bench/bench_sim.py --json     # the same as JSON

Peak RSS comes from resource.getrusage in the child (ru_maxrss), CPU from its process time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
from vllm_helix.sim.run import SimConfig, reference_s1_setup, simulate
mode = sys.argv[1]
plan, kv = reference_s1_setup()
config = SimConfig.reference_s1() if mode == "reference" else SimConfig.improved_s1()
cpu0, wall0 = time.process_time(), time.perf_counter()
r = simulate(plan, config, kv)
print(json.dumps({
    "mode": mode, "wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "decode_tok_s": r.decode_throughput, "total_tok_s": r.total_throughput,
    "ratio_window": r.ratio_to_max_flow, "ref_total_tok_s": r.reference_total_throughput,
    "ratio_ref_metric": r.reference_total_throughput / r.max_flow,
    "prompt_mean_s": r.prompt_latency["mean"], "prompt_p95_s": r.prompt_latency["p95"],
    "decode_mean_s": r.decode_latency["mean"], "decode_p95_s": r.decode_latency["p95"],
    "events": r.cost["events"],
}))
"""

REFERENCE = {"mode": "published reference", "wall_s": 16 * 60, "cpu_s": 14 * 60, "peak_rss_mb": 15000,
             "decode_tok_s": 248.3, "ref_total_tok_s": 1176.70, "ratio_ref_metric": 1176.70 / 1289.556,
             "prompt_mean_s": 3.094, "decode_mean_s": 1.457}


def run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    cols = [("mode", "{}"), ("wall_s", "{:.1f}"), ("cpu_s", "{:.1f}"), ("peak_rss_mb", "{:.0f}"),
            ("decode_tok_s", "{:.1f}"), ("ref_total_tok_s", "{:.1f}"), ("ratio_ref_metric", "{:.1%}"),
            ("total_tok_s", "{:.1f}"), ("ratio_window", "{:.1%}"), ("prompt_mean_s", "{:.3f}"),
            ("prompt_p95_s", "{:.3f}"), ("decode_mean_s", "{:.3f}"), ("decode_p95_s", "{:.3f}")]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[c]) if c in row else "–" for c, fmt in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [REFERENCE, run("reference"), run("improved")]
    print(json.dumps(rows, indent=2) if args.json else table(rows))


if __name__ == "__main__":
    main()
