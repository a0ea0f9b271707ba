"""MILP placement benchmark: max flow reached per time budget on the reference clusters (LLaMA-2-70B,
reference throughput model), beside the reference's Gurobi result and the heuristics.

    .venv/bin/python bench/bench_milp.py [--budgets 10 30 60 120] [--threads 2]

Every number is the evaluator's max flow (tokens/s) of the placement found, not a solver objective.
"""

from __future__ import annotations

import argparse
import time

from vllm_helix.errors import InfeasiblePlacement
from vllm_helix.planner.examples import reference_example
from vllm_helix.planner.place import place

REFERENCE_GUROBI = {"single24.ini": 1289.56}  # helix-spec §8.2: Gurobi 11, ~476 s of 600 on 14 cores


def run(cluster_file: str, budgets: list[float], threads: int, cold: bool) -> None:
    ex = reference_example("swarm", cluster_file)
    print(f"\n== {cluster_file} (LLaMA-2-70B, reference throughput, {threads} threads)")
    for method in ("petals", "swarm", "homogeneous"):
        plan = place(ex.cluster, ex.model, method)
        print(f"{method:<28} {plan.flow.value:10.2f}")
    if cluster_file in REFERENCE_GUROBI:
        print(f"{'reference MILP (Gurobi)':<28} {REFERENCE_GUROBI[cluster_file]:10.2f}")
    print(f"{'milp run':<28} {'budget s':>10} {'wall s':>8} {'max flow':>10} {'bound':>10} {'gap':>8} "
          "stopped, bound kind")
    for warm in (True, False) if cold else (True,):
        for budget in budgets:
            started = time.monotonic()
            try:
                plan = place(ex.cluster, ex.model, "milp", time_limit_s=budget, threads=threads, warm_start=warm)
            except InfeasiblePlacement:
                print(f"{'milp (cold, CP-SAT only)':<28} {budget:10.0f} {'-':>8} {'none':>10}", flush=True)
                continue
            d = plan.details
            gap = "-" if d["gap"] is None else f"{100 * d['gap']:.1f}%"
            label = "milp (warm start)" if warm else "milp (cold, CP-SAT only)"
            print(f"{label:<28} {budget:10.0f} {time.monotonic() - started:8.1f} {plan.flow.value:10.2f} "
                  f"{d['bound_tokens_per_s']:10.2f} {gap:>8} {d['stopped_by']}, {d['bound_kind'].split()[0]}",
                  flush=True)
            if d["stopped_by"] == "solved":
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[10, 30, 60, 120])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="also run CP-SAT without the warm start")
    parser.add_argument("--clusters", nargs="+", default=["single24.ini", "3cluster24.ini"])
    args = parser.parse_args()
    for cluster_file in args.clusters:
        run(cluster_file, args.budgets, args.threads, args.cold)


if __name__ == "__main__":
    main()
