"""Draw a placement: one bar per node over the layers it holds, coloured by GPU type, arcs weighted by flow."""

from __future__ import annotations

from pathlib import Path

from vllm_helix.planner.cluster import COORDINATOR, ClusterSpec
from vllm_helix.planner.flow import FlowResult
from vllm_helix.planner.placement import Placement


def plot_placement(
    cluster: ClusterSpec, placement: Placement, flow: FlowResult, num_layers: int, path: str | Path, title: str = ""
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    used = sorted(placement.ranges, key=lambda n: (placement[n].start, placement[n].end, n))
    row = {name: i for i, name in enumerate(used)}
    types = sorted({cluster.node(n).gpu_type for n in used})
    colours = {t: plt.cm.tab10(i % 10) for i, t in enumerate(types)}
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(used) + 1.8))
    for name in used:
        rng = placement[name]
        ax.barh(row[name], rng.size, left=rng.start, height=0.6, color=colours[cluster.node(name).gpu_type],
                edgecolor="black", linewidth=0.4)
        ax.text(rng.end + 0.3, row[name], f"{flow.node_flow.get(name, 0):.0f}", va="center", fontsize=7)
    peak = max(flow.arc_flow.values(), default=0) or 1
    for (src, dst), value in flow.arc_flow.items():
        if value <= 0 or COORDINATOR in (src, dst):
            continue
        x = placement[src].end
        ax.annotate("", xy=(x, row[dst]), xytext=(x, row[src]),
                    arrowprops={"arrowstyle": "-|>", "lw": 0.4 + 3 * value / peak, "alpha": 0.6, "color": "gray"})
    ax.set_yticks(range(len(used)), used, fontsize=7)
    ax.set_xlim(0, num_layers + 4)
    ax.invert_yaxis()
    ax.set_xlabel("layer")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[t]) for t in types]
    ax.legend(handles, types, loc="upper right", fontsize=8)
    ax.set_title(title or f"placement: max flow {flow.value:.1f} tokens/s (numbers: tokens/s per node)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
