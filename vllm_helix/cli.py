"""`vllm-helix`: plan, evaluate and simulate Helix placements; run cluster workers.

Every command turns bad input into one `error: ...` line and exit status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vllm_helix.errors import ClusterSpecError, ConfigError, HelixError
from vllm_helix.node.config import WorkerConfig

Handler = Callable[[argparse.Namespace], int]


# ------------------------------------------------------------------------------------ helpers


def _load_inputs(args: argparse.Namespace):
    """Cluster and model; resolves `--throughput auto` to the source that covers them."""
    from vllm_helix.planner.files import load_cluster
    from vllm_helix.planner.model import load_model
    from vllm_helix.planner.throughput import choose_source

    cluster, model = load_cluster(args.cluster), load_model(args.model)
    _use_profiles(args)
    args.throughput = choose_source(args.throughput, cluster, model)
    return cluster, model


def _use_profiles(args: argparse.Namespace) -> None:
    """`--profiles DIR`: measured profiles win over bundled ones for the (model, device) pairs they cover."""
    if getattr(args, "profiles", None):
        from vllm_helix.planner.profiles import load_profile_dir

        load_profile_dir(args.profiles)


def _load_placement(path: str, cluster):
    from vllm_helix.planner.files import load_placement

    return load_placement(path, cluster)


def _require_flow(flow, placement, model, partial_inference: bool) -> None:
    """A placement that serves nothing is an error that says why, not a max flow of 0."""
    from vllm_helix.errors import InfeasiblePlacement
    from vllm_helix.planner.flow import why_no_flow

    if flow.value <= 0:
        raise InfeasiblePlacement(f"max flow 0: {why_no_flow(placement, model.num_layers, partial_inference)}")


def _writable(path: str) -> str:
    """argparse type of output files: a path we cannot write is a usage error before any work is done."""
    target = Path(path)
    existed = target.exists()
    try:
        with target.open("a"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {path}: {exc.strerror}") from None
    if not existed:
        target.unlink()
    return path


def _host_list(text: str) -> list[tuple[str, int]]:
    from vllm_helix.discover import parse_host

    try:
        return [parse_host(part) for part in text.split(",") if part.strip()]
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--hosts: ")) from None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


PLOT_FORMATS = (".png", ".svg", ".pdf")  # what matplotlib writes from the file name without extra backends


def _plot_file(path: str) -> str:
    """argparse type of --plot files: a format matplotlib cannot write is a usage error before any work."""
    if Path(path).suffix.lower() not in PLOT_FORMATS:
        raise argparse.ArgumentTypeError(f"{path}: name a {', '.join(PLOT_FORMATS)} file")
    return _writable(path)


def _plot_dir(path: str) -> str:
    """argparse type of a folder for charts: made now, so a path that cannot be one fails before simulating."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot make folder {path}: {exc.strerror}") from None
    return path


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _refuse_ignored(args: argparse.Namespace, rules: Sequence[tuple[bool, Sequence[str], str]]) -> None:
    """A flag the chosen run would ignore is an error: the user meant something this run does not do.
    `rules`: (whether this run ignores them, the flags, why); only flags the command line names count."""
    given: set[str] = getattr(args, "flags_given", set())
    problems = []
    for ignores, flags, why in rules:
        if named := [flag for flag in flags if ignores and flag in given]:
            problems.append(f"{', '.join(named)} {'is' if len(named) == 1 else 'are'} {why}")
    if problems:
        raise ConfigError("; ".join(problems))


def _flags_given(argv: Sequence[str] | None) -> set[str]:
    """The options the command line names, a default's value given too (`--seed 0`): parsed again without
    defaults, what is left in the namespace is what was given."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in commands.values():
        for action in command._actions:
            action.default = argparse.SUPPRESS
    named = vars(parser.parse_args(argv))
    return {max(a.option_strings, key=len) for a in commands[named["command"]]._actions
            if a.option_strings and a.dest in named}


# ------------------------------------------------------------------------------------ commands


def cmd_flow(args: argparse.Namespace) -> int:
    from vllm_helix.planner.flow import max_flow
    from vllm_helix.planner.report import flow_table, flow_to_dict
    from vllm_helix.planner.throughput import node_sources

    cluster, model = _load_inputs(args)
    placement = _load_placement(args.placement, cluster)
    flow = max_flow(cluster, model, placement, throughput=args.throughput, graph=args.graph,
                    partial_inference=args.partial_inference)
    _require_flow(flow, placement, model, args.partial_inference)
    if args.plot:
        from vllm_helix.planner.plot import plot_placement

        plot_placement(cluster, placement, flow, model.num_layers, args.plot)
    sources = node_sources(cluster, model, args.throughput)
    if args.json:
        _print_json(flow_to_dict(cluster, placement, flow, sources))
    else:
        print(flow_table(cluster, placement, flow, sources))
    return 0


# what only a search reads: a fixed --placement ignores them
PLAN_SEARCH_FLAGS = ("--previous", "--method", "--objective", "--rate", "--slo", "--sim-window", "--work-limit",
                     "--seed", "--solver", "--threads", "--time-limit", "--move-tolerance")


HEURISTICS = ("petals", "swarm", "homogeneous")
MILP_FLAGS = ("--solver", "--threads", "--time-limit", "--work-limit", "--partial-inference")


def cmd_plan(args: argparse.Namespace) -> int:
    from vllm_helix.planner.place import place
    from vllm_helix.planner.profiles import has_profiles

    scored = args.method == "auto" and not args.previous  # only then does the simulator score candidates
    _refuse_ignored(args, [
        (bool(args.placement), PLAN_SEARCH_FLAGS, "not used with --placement (it is evaluated as it is, not searched)"),
        (not args.placement and not args.previous, ["--move-tolerance"], "for --previous"),
        (not args.placement and not scored and args.objective != "max-flow", ["--objective"],
         "for --method auto (a single method and --previous plan for max flow)"),
        (not args.placement and not scored, ["--rate", "--slo", "--sim-window"],
         "for --method auto (a single method and --previous plan for max flow)"),
        (not args.placement and args.method in HEURISTICS, MILP_FLAGS,
         f"for the MILP (--method {args.method} solves none)"),
    ])
    cluster, model = _load_inputs(args)
    if args.placement:  # a fixed split: evaluate it and write it as a plan
        from vllm_helix.planner.plan import evaluate_plan

        plan = evaluate_plan(cluster, model, _load_placement(args.placement, cluster), "fixed",
                             throughput=args.throughput, partial_inference=args.partial_inference)
        _require_flow(plan.flow, plan.placement, model, args.partial_inference)
        return _write_plan(args, cluster, model, plan)
    options: dict[str, Any] = {"seed": args.seed}
    milp = dict(solver=args.solver, threads=args.threads, time_limit_s=args.time_limit, work_limit=args.work_limit,
                partial_inference=args.partial_inference)
    method = args.method
    if args.previous:
        return _replan(args, cluster, model, {**options, **milp, "progress": not args.json})
    if method == "auto" and (args.objective == "max-flow"
                             or not has_profiles(model, set(cluster.composition()))):
        if args.objective != "max-flow":  # the simulator needs GPU profiles of the model
            print(f"note: model {model.name!r} has no GPU profiles to simulate with (measure them: `vllm-helix "
                  f"profile`, then --profiles DIR); planning for max flow", file=sys.stderr)
        method = "milp"
    if method == "auto":
        return _write_plan(args, cluster, model, _search_plan(args, cluster, model, milp))
    if method == "milp":
        options.update(milp, progress=not args.json)
    plan = place(cluster, model, method, throughput=args.throughput, **options)
    plan.details["reproduce"] = _reproduce_line()
    return _write_plan(args, cluster, model, plan)


def _search_plan(args: argparse.Namespace, cluster, model, milp: dict[str, Any]):
    """Candidates scored by the simulator (planner/ranking.py); prints one line per scored candidate."""
    from vllm_helix.planner.milp.options import SolverOptions
    from vllm_helix.planner.ranking import Objective, choose_plan, format_table

    objective = Objective(args.objective, window_s=args.sim_window, rate=args.rate, slo_s=args.slo, seed=args.seed)
    options = SolverOptions.from_kwargs(seed=args.seed, **milp)

    def show(ranked) -> None:
        if not args.json:
            s = ranked.score
            print(f"  scored {ranked.candidate.label:<22} max flow {s.max_flow:8.1f}  simulated decode "
                  f"{s.decode_tokens_per_s:7.1f} tok/s", file=sys.stderr, flush=True)

    if not args.json:
        print(f"planning for {args.objective}: candidates scored by the simulator ({args.sim_window:.0f} s "
              f"window); Ctrl-C keeps the best so far", file=sys.stderr)
    plan, result = choose_plan(cluster, model, args.throughput, objective, options, args.time_limit, show)
    plan.details["reproduce"] = _reproduce_line()
    if not args.json:
        print(format_table(result, objective))
        how = "same plan again" if plan.details["reproducible"] else (
            f"not guaranteed: the search stopped by {result.stopped_by}; raise --time-limit")
        print(f"\nchose {result.best.candidate.label} ({result.stopped_by}, {result.elapsed_s:.0f} s); "
              f"reproduce ({how}): {plan.details['reproduce']}")
    return plan


def _reproduce_line() -> str:
    import shlex

    return "vllm-helix " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _replan(args: argparse.Namespace, cluster, model, options: dict[str, Any]) -> int:
    """`plan --previous`: the plan for the changed cluster that loads the fewest layers (planner/replan.py)."""
    from vllm_helix.planner.files import load_plan
    from vllm_helix.planner.replan import check_previous_model, replan

    if args.method not in ("auto", "milp"):
        raise ClusterSpecError("--previous re-plans with the MILP; drop --method or use --method milp")
    options.pop("partial_inference", None)
    previous = load_plan(args.previous)
    check_previous_model(previous.model, model, f"--previous {args.previous}")
    result = replan(previous.placement, cluster, model, throughput=args.throughput,
                    tolerance=args.move_tolerance, partial_inference=args.partial_inference, **options)
    if not args.json:
        print(result.summary() + "\n")
    return _write_plan(args, cluster, model, result.plan)


def _write_plan(args: argparse.Namespace, cluster, model, plan) -> int:
    from vllm_helix.planner.keys import save_plan_with_keys
    from vllm_helix.planner.plan import plan_to_dict
    from vllm_helix.planner.report import flow_table
    from vllm_helix.planner.throughput import node_sources

    plan, key_lines = save_plan_with_keys(plan, args.output)
    if args.plot:
        from vllm_helix.planner.plot import plot_placement

        plot_placement(cluster, plan.placement, plan.flow, model.num_layers, args.plot,
                       title=f"{plan.method}: max flow {plan.flow.value:.1f} tokens/s")
    if args.json:
        summary = plan_to_dict(plan)
        summary.pop("cluster")
        _print_json(summary)
    else:
        print(flow_table(cluster, plan.placement, plan.flow, node_sources(cluster, model, plan.throughput_model)))
        _print_bound(plan.details)
        print(f"\nplan ({plan.method}) written to {args.output}")
        _print_key_lines(key_lines)
    return 0


def _print_bound(details: dict[str, Any]) -> None:
    """The max-flow MILP's upper bound on any placement, which bound it is, and the gap to this plan."""
    if details.get("bound_tokens_per_s") is None:
        return
    gap = "" if details.get("gap") is None else f", gap {100 * details['gap']:.1f} %"
    print(f"upper bound on any placement's max flow: {details['bound_tokens_per_s']:.3f} tokens/s{gap}; "
          f"{details.get('bound_kind', 'solver')}")


def _print_key_lines(lines: list[str]) -> None:
    if lines:
        print("CURVE secret keys (mode 0600; copy each only to its host, pass it with `vllm-helix worker --key`):")
        print("\n".join("  " + line for line in lines))


def cmd_keys(args: argparse.Namespace) -> int:
    from vllm_helix.planner.files import load_plan
    from vllm_helix.planner.keys import issue_keys
    from vllm_helix.planner.plan import save_plan

    plan, lines = issue_keys(load_plan(args.plan), args.plan, tuple(args.rotate))
    save_plan(plan, args.plan)
    print(f"public keys written to {args.plan}")
    _print_key_lines(lines)
    if args.rotate:
        print(f"rotated {', '.join(args.rotate)}: restart those workers with their new key files; a `vllm serve` "
              f"running this plan refuses the old keys from now on (a rotated coordinator needs its restart)")
    return 0


def cmd_import_ini(args: argparse.Namespace) -> int:
    from vllm_helix.planner.cluster import save_cluster
    from vllm_helix.planner.ini import read_cluster_ini

    cluster = read_cluster_ini(args.ini, args.machine_profile)
    save_cluster(cluster, args.output)
    print(f"{args.ini}: {len(cluster.nodes)} nodes, {len(cluster.links)} directed links -> {args.output}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Plan the bundled reference cluster with every method and compare with the reference's layouts."""
    from vllm_helix.planner.examples import REFERENCE_METHODS, reference_example
    from vllm_helix.planner.flow import max_flow
    from vllm_helix.planner.place import METHODS, place

    ex = reference_example("ilp")
    print(f"bundled example: reference single24 ({ex.cluster.composition()}), model {ex.model.name}\n")
    print(f"{'placement':<34}{'max flow (tokens/s)':>20}")
    for method in REFERENCE_METHODS:
        ref = reference_example(method)
        flow = max_flow(ref.cluster, ref.model, ref.placement, partial_inference=ref.partial_inference)
        print(f"{'reference layout: ' + method:<34}{flow.value:>20.3f}")
    for method in sorted(METHODS):
        options = {"time_limit_s": args.time_limit, "progress": False} if method == "milp" else {}
        plan = place(ex.cluster, ex.model, method, **options)
        print(f"{'vllm-helix plan: ' + method:<34}{plan.flow.value:>20.3f}")
    print(f"\nupper bound U (max compute throughput): {flow.upper_bound:.3f} tokens/s")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from vllm_helix.sim.run import SimConfig, reference_s1_setup, simulate

    _check_simulate_flags(args)
    if args.reference_s1:  # the reference's examples/simulation run (helix-spec §8.3 S1)
        plan, kv = reference_s1_setup()
        config, cluster = (SimConfig.improved_s1() if args.improved else SimConfig.reference_s1()), None
    else:
        _use_profiles(args)
        plan, kv, cluster = _simulated_plan(args)
        config = SimConfig(mode=args.mode, scheduler=args.scheduler, improved=args.improved,
                           reference_compat=args.reference_compat, seed=args.seed, duration_s=args.duration,
                           token_rate=args.rate, trace=args.trace, dataset=args.dataset,
                           initial_queries=args.initial_queries, engine=_engine_limits(args))
    import dataclasses

    report = simulate(plan, dataclasses.replace(config, progress=not args.json), kv, cluster)
    if args.plot:
        from vllm_helix.sim.plots import write_plots

        written = write_plots(report, args.plot)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.summary())
        if args.plot:
            print("plots: " + ", ".join(map(str, written)))
    return 0


# what the reference run sets itself
REFERENCE_S1_FIXED = ("--cluster", "--plan", "--links", "--model", "--throughput", "--profiles", "--partial-inference",
                      "--initial-queries", "--mode", "--scheduler", "--reference-compat", "--rate", "--trace",
                      "--dataset", "--duration", "--helix-depth", "--max-num-batched-tokens", "--max-num-seqs",
                      "--seed")


def _check_simulate_flags(args: argparse.Namespace) -> None:
    """Flags this simulation would ignore (those that need a plan file are checked once it is read)."""
    if args.reference_s1:
        _refuse_ignored(args, [(True, REFERENCE_S1_FIXED, "fixed by --reference-s1")])
    online = args.mode == "online"
    _refuse_ignored(args, [
        (not online, ["--trace", "--rate"], "for --mode online"),
        (online, ["--initial-queries"], "for --mode offline"),
        (args.helix_depth is None, ["--max-num-batched-tokens", "--max-num-seqs"], "for --helix-depth"),
    ])


def _engine_limits(args: argparse.Namespace):
    """--helix-depth: batch as `vllm serve --executor helix` with these settings does, not at the nodes."""
    if args.helix_depth is None:
        return None
    from vllm_helix.sim.batching import EngineLimits

    given = {"max_num_batched_tokens": args.max_num_batched_tokens, "max_num_seqs": args.max_num_seqs}
    return EngineLimits(args.helix_depth, **{name: value for name, value in given.items() if value is not None})


def _simulated_plan(args: argparse.Namespace):
    """(plan, KV capacities or None, cluster to check the plan against) from --plan, --cluster and --links."""
    from vllm_helix.planner.files import is_plan, load_cluster, load_placement, load_plan, read_yaml
    from vllm_helix.planner.flow import max_flow
    from vllm_helix.planner.plan import Plan

    if not args.plan or not (args.cluster or args.links):
        raise ClusterSpecError("simulate needs --plan and --cluster (or --links), or --reference-s1")
    plan_file = not args.plan.endswith(".ini") and is_plan(read_yaml(args.plan, "plan"))
    _refuse_ignored(args, [  # a plan file brings its model and flows (--links: flows of the reference's model)
        (plan_file, ["--model"] + ([] if args.links else ["--throughput", "--partial-inference"]),
         "taken from the --plan file"),
        (bool(args.links), ["--throughput"], "not used with --links (the reference's model sets its flows)"),
    ])
    if args.links:  # the reference's pruned link set: its links, in its order, its KV capacities and weights
        from vllm_helix.planner.ini import read_simulator_cluster_ini
        from vllm_helix.planner.model import load_model

        sim = read_simulator_cluster_ini(args.links)
        model = load_plan(args.plan).model if plan_file else load_model(args.model)
        placement = load_plan(args.plan).placement if plan_file else load_placement(args.plan, sim.cluster)
        flow = max_flow(sim.cluster, model, placement, link_order=sim.link_order, scale=None,
                        partial_inference=args.partial_inference)
        plan = Plan(sim.cluster, model, placement, flow, "fixed", partial_inference=args.partial_inference)
        return plan, dict(sim.kv_slots), load_cluster(args.cluster) if args.cluster else None
    cluster = load_cluster(args.cluster)
    if plan_file:
        return load_plan(args.plan), None, cluster
    from vllm_helix.planner.model import load_model
    from vllm_helix.planner.plan import evaluate_plan
    from vllm_helix.planner.throughput import choose_source

    model, placement = load_model(args.model), load_placement(args.plan, cluster)
    plan = evaluate_plan(cluster, model, placement, "fixed", throughput=choose_source(args.throughput, cluster, model),
                         partial_inference=args.partial_inference)
    return plan, None, cluster


def cmd_profile(args: argparse.Namespace) -> int:
    from vllm_helix.profiling.run import Device, run_profile

    device = Device.parse(args.device)
    doc = run_profile(args.model, device, dtype=args.dtype, kv_fraction=args.kv_fraction, quick=args.quick,
                      enforce_eager=args.enforce_eager, gpu=args.gpu, output=args.output)
    meta = doc["metadata"]
    print(f"{doc['model']} on {doc['gpu']} ({meta['device_name']}, {meta['dtype']}, vLLM {meta['vllm_version']}): "
          f"up to {doc['max_num_layers']} layers, {doc['step_overhead_ms']:.2f} ms per batch + per layer "
          f"{_row_ms(doc['prompt_layer_ms'])} (prefill tokens: ms), {_row_ms(doc['decode_layer_ms'])} "
          f"(decode sequences: ms)" + (f"; the last range adds {_row_ms(doc['sampling_ms'])} per batch (sampling)"
                                        if "sampling_ms" in doc else ""))
    print(f"profile written to {args.output}; use it with `vllm-helix plan --profiles {Path(args.output).parent}`")
    return 0


def _row_ms(rows: list) -> str:
    return ", ".join(f"{x}: {ms:.3f}" for x, ms in rows[1:])


def cmd_status(args: argparse.Namespace) -> int:
    from vllm_helix.status import scrape, status_table

    print(status_table(scrape(args.url)))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import logging

    from vllm_helix.node.main import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.probe:
        return _run_probe(args)
    missing = [f"--{name}" for name in ("plan", "node", "model") if not getattr(args, name)]
    if missing:
        raise ConfigError(f"the following arguments are required: {', '.join(missing)} (or --probe)")
    run_worker(args.plan, args.node, args.model, WorkerConfig.from_cli(args), bind=args.bind)
    return 0


def _run_probe(args: argparse.Namespace) -> int:
    """`vllm-helix worker --probe --bind HOST:PORT`: answer `vllm-helix discover` until Ctrl-C."""
    import socket

    from vllm_helix.discover import Prober

    if not args.bind:
        raise ConfigError("--probe needs --bind HOST:PORT (the address `vllm-helix discover --hosts` is given)")
    prober = Prober(args.node or socket.gethostname(), args.bind)
    print(f"probe {prober.name} listening on {prober.address}; Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        prober.serve_forever()
    finally:
        prober.close()
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    from vllm_helix.discover import discover_hosts, discover_ray
    from vllm_helix.planner.cluster import describe_cluster, save_cluster

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.monotonic()
    if args.ray:
        cluster = discover_ray(args.timeout, progress)
    else:
        cluster = discover_hosts(args.hosts, args.bind_ip, args.timeout, progress)
    save_cluster(cluster, args.output)
    print(describe_cluster(cluster))
    print(f"wrote {args.output} ({time.monotonic() - started:.1f} s of probing); next: "
          f"vllm-helix plan --cluster {args.output} --model MODEL -o plan.yaml")
    return 0


# ------------------------------------------------------------------------------------ parser


THROUGHPUT_CHOICES = ["auto", "reference", "profile", "estimate", "measured"]


def _profiles_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profiles", metavar="DIR",
                   help="measured profiles (`vllm-helix profile -o DIR/NAME.json`): used for the (model, device) "
                        "pairs they cover, over bundled profiles and estimates")


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", required=True, help="cluster YAML, or a reference topology .ini")
    p.add_argument("--model", default="llama2-70b",
                   help="built-in model (llama2-70b, llama1-30b) or a Hugging Face model dir / config.json")
    p.add_argument("--throughput", default="auto", choices=THROUGHPUT_CHOICES,
                   help="node throughput model: the reference's typical-batch model, a fixed-batch profile, "
                        "a roofline estimate for unprofiled GPUs/models, or measured profiles (--profiles) per "
                        "node; auto (default): measured if --profiles covers a node, else the first of the "
                        "others that covers the cluster's GPUs and the model")
    _profiles_arg(p)
    p.add_argument("--partial-inference", action="store_true",
                   help="let a node run only the suffix of its layers that a route still needs")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--plot", metavar="PNG", type=_plot_file, help="draw the placement to this PNG (or .svg, .pdf) file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-helix", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("flow", help="max flow of a given placement",
                       description="Evaluate a placement: upper bound U, max flow, per-node flow, min cut.")
    _cluster_args(p)
    p.add_argument("--placement", required=True,
                   help="plan YAML, reference *_sol.ini, or YAML mapping 'node: [start, end]'")
    p.add_argument("--graph", default="split", choices=["split", "planner"],
                   help="node-split graph with NICs (default) or the MILP's planner graph")
    p.set_defaults(handler=cmd_flow)

    p = sub.add_parser("plan", help="find a placement and write a plan file",
                       description="Find a layer placement that maximizes the cluster's max flow.")
    _cluster_args(p)
    p.add_argument("--method", default="auto", choices=["auto", "milp", "petals", "swarm", "homogeneous"],
                   help="auto: candidates from every method, chosen by --objective (default); or one method")
    p.add_argument("--objective", default="throughput", choices=["throughput", "max-flow", "latency"],
                   help="throughput: simulated offline decode tok/s; max-flow: the bound (no simulation); "
                        "latency: simulated online p95 decode latency at --rate")
    p.add_argument("--rate", type=float, help="online load in tokens/s (for --objective latency and --slo)")
    p.add_argument("--slo", type=float, metavar="SECONDS",
                   help="p95 decode latency bound at --rate; plans that miss it rank last")
    p.add_argument("--sim-window", type=float, default=120.0,
                   help="simulated seconds per candidate (after a 60 s warm-up)")
    p.add_argument("--work-limit", type=float, default=10.0,
                   help="CP-SAT deterministic work units per MILP run (same inputs and seed, same plan)")
    p.add_argument("--placement", help="write a plan for this fixed placement instead of searching one")
    p.add_argument("-o", "--output", required=True, type=_writable, help="plan YAML to write")
    p.add_argument("--seed", type=int, default=0, help="random seed (heuristics and solver)")
    p.add_argument("--solver", default="auto", help="MILP solver: auto, cpsat or gurobi")
    p.add_argument("--threads", type=int, default=2, help="solver threads (fixed, for reproducible plans)")
    p.add_argument("--time-limit", type=float, default=120.0,
                   help="wall-clock budget in seconds (the whole search with --method auto; a cap, not a target)")
    p.add_argument("--previous", metavar="PLAN",
                   help="the plan serving now, for a changed cluster (nodes gone or added): keep as many of its "
                        "layers in place as possible and report the layer loads versus planning from scratch")
    p.add_argument("--move-tolerance", type=float, default=0.05,
                   help="with --previous: accept up to this fraction less max flow to load fewer layers")
    p.set_defaults(handler=cmd_plan)

    p = sub.add_parser("keys", help="make or rotate the CURVE keys of a plan",
                       description="Give the coordinator and every node of a plan a CURVE key pair: public keys "
                                   "into the plan, each secret into <plan>.<name>.key beside it (mode 0600). "
                                   "Existing key files are kept unless rotated.")
    p.add_argument("--plan", required=True, help="plan YAML to add the public keys to")
    p.add_argument("--rotate", action="append", default=[], metavar="NODE",
                   help="re-issue this node's (or 'coordinator''s) key pair; repeatable")
    p.set_defaults(handler=cmd_keys)

    p = sub.add_parser("import-ini", help="convert a reference cluster .ini to YAML",
                       description="Convert a Helix reference topology .ini (bandwidths in bytes/s) to YAML.")
    p.add_argument("ini", help="reference topology file, e.g. single24.ini")
    p.add_argument("--machine-profile", help="reference machine_profile.ini (default: the bundled one)")
    p.add_argument("-o", "--output", required=True, type=_writable, help="cluster YAML to write")
    p.set_defaults(handler=cmd_import_ini)

    p = sub.add_parser("demo", help="plan the bundled example cluster with every method",
                       description="Plan and evaluate the bundled reference cluster (24 GPUs, LLaMA-2-70B).")
    p.add_argument("--time-limit", type=_positive_seconds, default=20.0, help="MILP time limit, seconds")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("simulate", help="simulate serving a plan (discrete-event)",
                       description="Simulate a plan on its cluster: throughput, latency, per-node utilization and KV.")
    p.add_argument("--cluster", help="cluster YAML or reference .ini the plan was made for")
    p.add_argument("--plan", help="plan YAML from `vllm-helix plan`, or a placement (reference *_sol.ini, "
                                  "YAML 'node: [start, end]') to evaluate on --cluster")
    p.add_argument("--links", metavar="SIMULATOR_CLUSTER_INI",
                   help="the reference's pruned link set for the plan (its layouts/*/simulator_cluster.ini): route "
                        "over only these links, in its order, with its KV capacities and raw-float flows")
    p.add_argument("--model", default="llama2-70b", help="model of a --plan placement (default llama2-70b)")
    p.add_argument("--throughput", default="auto", choices=THROUGHPUT_CHOICES,
                   help="node throughput model for a --plan placement")
    _profiles_arg(p)
    p.add_argument("--partial-inference", action="store_true", help="a --plan placement uses partial inference")
    p.add_argument("--initial-queries", type=int, metavar="N",
                   help="offline: queries launched at start (default 20 for maxflow, 240 for the others, as the "
                        "reference)")
    p.add_argument("--mode", default="offline", choices=["offline", "online"],
                   help="offline: keep the cluster full; online: requests arrive at --rate or from --trace")
    p.add_argument("--scheduler", default="maxflow", choices=["maxflow", "swarm", "random", "shortest-queue"])
    p.add_argument("--improved", action="store_true", help="improved max-flow scheduling (see docs/simulator.md)")
    p.add_argument("--reference-compat", action="store_true", help="keep the reference simulator's quirks")
    p.add_argument("--reference-s1", action="store_true",
                   help="the reference's published example run (single24, its ILP layout, offline maxflow)")
    p.add_argument("--rate", type=float, help="online: target tokens/s (default: half the plan's max flow)")
    p.add_argument("--trace", help="online: CSV/JSONL of arrival_time_s,input_tokens,output_tokens")
    p.add_argument("--dataset", default="azure_conv", help="request lengths: azure_conv, azure_code, alpaca, "
                                                            "shared_gpt")
    p.add_argument("--duration", type=float, help="measured seconds (default 600 offline, 1800 online)")
    p.add_argument("--helix-depth", type=int, metavar="N",
                   help="batch as a vllm-helix server does: N steps in flight from the coordinator (0 = one per "
                        "node, its default), formed under the two vLLM limits below (default: the reference's "
                        "model, every node batching what is queued there)")
    p.add_argument("--max-num-batched-tokens", type=int,
                   help="with --helix-depth: vLLM's token budget (default 2048, as vLLM's)")
    p.add_argument("--max-num-seqs", type=int,
                   help="with --helix-depth: vLLM's running requests cap (default 256, as vLLM's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", metavar="DIR", type=_plot_dir, help="write PNG charts to this directory")
    p.set_defaults(handler=cmd_simulate)

    p = sub.add_parser("profile", help="measure this machine's per-batch times for the planner",
                       description="Run the partial-layer worker on this device for a sweep of layer counts, "
                                   "prefill chunks and decode batches (at several contexts), and write a profile "
                                   "for `plan/flow/simulate --profiles DIR`.")
    p.add_argument("--model", required=True, help="the model directory (Hugging Face format, safetensors)")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    p.add_argument("--dtype", default="auto", help="as serving's --dtype (auto: float32 on a host without CUDA)")
    p.add_argument("--kv-fraction", type=_fraction, default=WorkerConfig().kv_fraction,
                   help="share of free memory for the KV cache, as the nodes will serve (default %(default)s)")
    p.add_argument("--gpu", help="the cluster file's `gpu:` value this profile is for (default: cpu, or the GPU "
                                 "type in the device name, e.g. H200)")
    p.add_argument("--quick", action="store_true", help="a short sweep (two layer counts, two sizes each)")
    p.add_argument("--enforce-eager", action="store_true",
                   help="time eager layers (default: vLLM's torch.compile, as serving runs them)")
    p.add_argument("-o", "--output", required=True, type=_writable, help="profile JSON to write")
    p.set_defaults(handler=cmd_profile)

    p = sub.add_parser("status", help="a running Helix server's nodes, flows and bottleneck (its helix_ metrics)",
                       description="Read the helix_* Prometheus metrics of `vllm serve --executor helix` and print "
                                   "nodes, layer ranges, live/planned flow and the bottleneck.")
    p.add_argument("--url", required=True, help="the server, e.g. http://localhost:8000")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("worker", help="run one node of a plan (partial-layer vLLM engine)",
                       description="Serve the layers a plan gives NODE; waits for the coordinator "
                                   "(`vllm serve MODEL --executor helix --helix-plan PLAN`), in any start order.")
    p.add_argument("--plan", help="plan YAML (names every node's address)")
    p.add_argument("--node", help="this node's name in the plan (with --probe: in the discovered cluster; default: "
                                  "the host name)")
    p.add_argument("--model", help="the model directory (Hugging Face format, safetensors)")
    p.add_argument("--bind", help="address to listen on (default: the node's address in the plan)")
    p.add_argument("--probe", action="store_true",
                   help="no plan yet: answer `vllm-helix discover --hosts` on --bind (what this host has, link "
                        "probes) until Ctrl-C")
    WorkerConfig.add_cli_args(p)
    p.set_defaults(handler=cmd_worker, usage_error=p.error)

    p = sub.add_parser("discover", help="measure the hosts and links there are; write a cluster file",
                       description="Ask every host what accelerators and memory it has and measure every directed "
                                   "link (bandwidth, latency) between them and to this coordinator, over the "
                                   "project's transport; writes a cluster YAML for `vllm-helix plan`.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--hosts", type=_host_list, metavar="H1:PORT,H2:PORT,...",
                       help="probes started by hand: `vllm-helix worker --probe --bind H:PORT` on each host")
    where.add_argument("--ray", action="store_true",
                       help="every node of the running Ray cluster (ray.init(address='auto')), probed by a Ray actor")
    p.add_argument("-o", "--output", required=True, type=_writable, help="cluster YAML to write")
    p.add_argument("--bind-ip", help="this host's address the probes reach (default: the route to the first host)")
    p.add_argument("--timeout", type=_positive_seconds, default=10.0,
                   help="seconds a probe may take to answer before its host is an error (default 10)")
    p.set_defaults(handler=cmd_discover, usage_error=p.error)
    return parser


INPUT_OPTIONS = ("cluster", "placement", "plan", "previous", "links", "trace", "ini", "machine_profile", "model",
                 "profiles")


def _output_clash(args: argparse.Namespace) -> str | None:
    """What -o would destroy (an input before it is read back, or the --plot output), as the end of a message."""
    from vllm_helix.planner.model import BUILTIN_MODELS

    output = getattr(args, "output", None)
    if output is None:
        return None
    target = Path(output).resolve()
    for option in INPUT_OPTIONS:
        given = getattr(args, option, None)
        if not isinstance(given, str) or (option == "model" and given in BUILTIN_MODELS):
            continue
        flag, path = "--" + option.replace("_", "-"), Path(given).resolve()
        if path == target:
            return f"is also the {flag} input"
        if option == "profiles" and target.parent == path and target.suffix == ".json":
            return f"is in the {flag} folder {given}, whose *.json files are read as profiles"
        if option == "model" and path.is_dir() and target.is_file() and target.is_relative_to(path):
            return f"would replace a file of the {flag} folder {given}"  # a model's files: its config, weights
    if getattr(args, "plot", None) and Path(args.plot).resolve() == target:
        return "is also the --plot output"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if clash := _output_clash(args):
        print(f"error: -o {args.output} {clash}; write the output elsewhere", file=sys.stderr)
        return 2
    args.flags_given = _flags_given(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:  # a bad option: a usage error of its command
        if hasattr(args, "usage_error"):
            args.usage_error(str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except HelixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
