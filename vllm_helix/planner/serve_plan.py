"""Planning at `vllm serve` start-up (`--helix-cluster`): plan the cluster for the model, write it beside
the cluster file, and hand its path to the executor as if `--helix-plan` had named it. A cluster with
non-loopback addresses gets its CURVE keys beside the plan too (planner/keys.py), as `vllm-helix plan` does."""

from __future__ import annotations

from pathlib import Path

from vllm_helix.errors import ClusterSpecError


def plan_path_for(cluster_path: str | Path) -> Path:
    """`cluster.yaml` -> `cluster.plan.yaml`, in the same directory."""
    path = Path(cluster_path)
    return path.with_name(f"{path.stem}.plan.yaml")


def plan_at_start(cluster_path: str | Path, model_path: str | Path, *, throughput: str = "auto",
                  time_limit_s: float = 20.0) -> tuple[Path, str]:
    """Plan with the MILP under a short time limit; returns the written plan's path and its table."""
    from vllm_helix.planner.files import load_cluster
    from vllm_helix.planner.keys import save_plan_with_keys
    from vllm_helix.planner.model import load_model
    from vllm_helix.planner.place import place
    from vllm_helix.planner.report import flow_table
    from vllm_helix.planner.throughput import choose_source

    cluster, model = load_cluster(cluster_path), load_model(model_path)
    source = choose_source(throughput, cluster, model)
    plan = place(cluster, model, "milp", throughput=source, time_limit_s=time_limit_s, progress=False)
    out = plan_path_for(cluster_path)
    try:
        plan, key_lines = save_plan_with_keys(plan, out)
    except OSError as exc:
        raise ClusterSpecError(f"{out}: cannot write the plan beside the cluster file ({exc.strerror})") from None
    header = f"Helix plan for {cluster.name} ({source} throughput, milp, {time_limit_s:g} s limit), written to {out}:"
    keys = "".join(f"\n  {line}" for line in key_lines)
    if keys:
        keys = "\nCURVE secret keys (mode 0600; copy each only to its host, `vllm-helix worker --key`):" + keys
    return out, header + "\n" + flow_table(cluster, plan.placement, plan.flow) + keys
