"""Plans that serve best: `vllm-helix plan` (simulation in the loop) beside the reference layout, the
heuristics and the max-flow MILP, judged by the simulator on a full 600 s window (LLaMA-2-70B, reference
throughput model, maxflow scheduler, seed 0).

    .venv/bin/python bench/bench_plan.py [--budget 120] [--clusters single24 3cluster24 held-single-1 ...]
                                         [--stability]

Clusters: the bundled single24 and 3cluster24, and held-out ones of the same kind generated here
(`held-single-S`: 24 nodes, A100/L4/T4 counts drawn around 4/8/12, single24's links; `held-geo-S`: three regions
as 3cluster24's generator, helix-spec §1.1). For each: offline decode/total tok/s over 600 s, and online p95
decode latency at half the chosen plan's max flow, for every plan at that same rate. `--stability` also
re-scores every candidate on a 600 s window and compares the order with the 120 s one.
"""

from __future__ import annotations

import argparse
import random
import time

from vllm_helix.planner.cluster import COORDINATOR, ClusterSpec, LinkSpec
from vllm_helix.planner.examples import reference_dir, reference_example
from vllm_helix.planner.ini import read_cluster_ini
from vllm_helix.planner.milp.options import SolverOptions
from vllm_helix.planner.model import BUILTIN_MODELS
from vllm_helix.planner.place import place
from vllm_helix.planner.plan import evaluate_plan
from vllm_helix.planner.ranking import Objective, choose_plan, score_plan
from vllm_helix.sim.run import SimConfig, simulate

MODEL = BUILTIN_MODELS["llama2-70b"]


def held_out(name: str) -> ClusterSpec:
    """A seeded cluster of the same kind as single24 (`held-single-S`) or 3cluster24 (`held-geo-S`)."""
    kind, seed = name.rsplit("-", 1)
    rng = random.Random(int(seed))
    base = read_cluster_ini(reference_dir() / ("single24.ini" if kind == "held-single" else "3cluster24.ini"))
    by_type = {n.gpu: n for n in base.nodes}
    a100, l4 = rng.randint(3, 5), rng.randint(6, 10)
    types = ["A100"] * a100 + ["L4"] * l4 + ["T4"] * (24 - a100 - l4)
    if kind == "held-single":
        rng.shuffle(types)
    nodes = tuple(_node(by_type[t], f"n{i}", "default") for i, t in enumerate(types))
    if kind == "held-geo":  # regions: A100s, then the L4/T4s split in two (as PartitionedClusterGenerator)
        cut = a100 + (24 - a100) // 2
        nodes = tuple(_node(n, n.name, "r0" if i < a100 else "r1" if i < cut else "r2") for i, n in enumerate(nodes))
    links = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            bw, lat = _link(rng, kind == "held-single" or a.region == b.region)
            links += [LinkSpec(a.name, b.name, bw, lat), LinkSpec(b.name, a.name, bw, lat)]
        bw, lat = _link(rng, kind == "held-single")
        links += [LinkSpec(COORDINATOR, a.name, bw, lat), LinkSpec(a.name, COORDINATOR, bw, lat)]
    return ClusterSpec(nodes, tuple(links), base.coordinator, name)


def _node(template, name: str, region: str):
    import dataclasses

    return dataclasses.replace(template, name=name, region=region)


def _link(rng: random.Random, fast: bool) -> tuple[float, float]:
    if fast:  # in-region (helix-spec §1.1): 1.25 GB/s +- 125 MB/s, 1 ms
        return 1.25e9 + rng.uniform(-125e6, 125e6), 0.001
    return 12.5e6 + rng.uniform(-2.5e6, 2.5e6), int(50 + rng.uniform(-10, 10)) / 1000


def load(name: str) -> ClusterSpec:
    if name.startswith("held-"):
        return held_out(name)
    return read_cluster_ini(reference_dir() / f"{name}.ini")


def sim_row(label: str, plan, rate: float) -> str:
    offline = simulate(plan, SimConfig(mode="offline", duration_s=600))
    online = simulate(plan, SimConfig(mode="online", duration_s=600, token_rate=rate, max_time_s=1e4))
    return (f"| {label} | {plan.flow.value:.1f} | {offline.decode_throughput:.1f} | {offline.total_throughput:.1f} "
            f"| {offline.decode_latency['p50']:.2f} / {offline.decode_latency['p95']:.2f} "
            f"| {online.decode_latency['p95']:.2f} |"), offline.decode_throughput


def run(name: str, budget: float, stability: bool) -> None:
    cluster = load(name)
    started = time.monotonic()
    chosen, result = choose_plan(cluster, MODEL, "reference", Objective("throughput"),
                                 SolverOptions(solver="cpsat", work_limit=10), budget)
    wall = time.monotonic() - started
    rate = 0.5 * chosen.flow.value
    print(f"\n### {name}: chose `{result.best.candidate.label}` in {wall:.0f} s wall ({result.stopped_by}, "
          f"{len(result.ranked)} candidates scored); online rate {rate:.0f} tok/s\n")
    print("| plan | max flow | decode tok/s (600 s) | total tok/s | decode p50 / p95 s | online p95 decode s |")
    print("|---|---|---|---|---|---|")
    rows = {}
    if name == "single24":
        ilp = reference_example("ilp")
        ref = evaluate_plan(ilp.cluster, MODEL, ilp.placement, "ilp")
        line, rows["reference ILP"] = sim_row("reference ILP layout", ref, rate)
        print(line, flush=True)
    for method in ("petals", "swarm", "homogeneous"):
        try:
            plan = place(cluster, MODEL, method)
        except Exception as exc:  # noqa: BLE001 - a heuristic that cannot shape this cluster is reported
            print(f"| {method} | ({exc}) | | | | |")
            continue
        line, rows[method] = sim_row(method, plan, rate)
        print(line, flush=True)
    maxflow = place(cluster, MODEL, "milp", solver="cpsat", work_limit=10, time_limit_s=60)
    line, rows["max-flow MILP"] = sim_row("max-flow MILP (`--objective max-flow`)", maxflow, rate)
    print(line, flush=True)
    line, rows["chosen"] = sim_row(f"**chosen: {result.best.candidate.label}**", chosen, rate)
    print(line, flush=True)
    base = rows.get("reference ILP", rows["max-flow MILP"])
    best_heuristic = max(rows[m] for m in ("petals", "swarm", "homogeneous") if m in rows)
    print(f"\nchosen / {'reference ILP' if 'reference ILP' in rows else 'max-flow MILP'}: "
          f"{rows['chosen'] / base:.3f}x; chosen / best heuristic: {rows['chosen'] / best_heuristic:.3f}x")
    if stability:
        long = Objective("throughput", window_s=600, confirm_window_s=None)
        short = {r.candidate.label: r.score.decode_tokens_per_s for r in result.ranked}
        scores = {r.candidate.label: score_plan(r.candidate.plan, long).decode_tokens_per_s for r in result.ranked}
        by_short = sorted(short, key=short.get, reverse=True)
        by_long = sorted(scores, key=scores.get, reverse=True)
        print(f"\nranking 120 s: {by_short}\nranking 600 s: {by_long}\n600 s decode: "
              f"{ {k: round(v, 1) for k, v in scores.items()} }")
        print(f"Spearman rank correlation 120 s vs 600 s: {_spearman(by_short, by_long):.3f} over {len(short)}; "
              f"top-1 120 s = top-1 600 s: {by_short[0] == by_long[0]}; chosen (after confirming the finalists) "
              f"= top-1 600 s: {result.best.candidate.label == by_long[0]}")


def _spearman(a: list[str], b: list[str]) -> float:
    n = len(a)
    if n < 2:
        return 1.0
    rank = {k: i for i, k in enumerate(b)}
    return 1 - 6 * sum((i - rank[k]) ** 2 for i, k in enumerate(a)) / (n * (n * n - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="wall-clock seconds for the plan search")
    parser.add_argument("--clusters", nargs="+", default=["single24", "3cluster24", "held-single-1", "held-geo-1"])
    parser.add_argument("--stability", action="store_true")
    args = parser.parse_args()
    for name in args.clusters:
        run(name, args.budget, args.stability)


if __name__ == "__main__":
    main()
