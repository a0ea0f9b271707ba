"""PNG charts of a SimReport: throughput over time, latency CDFs, per-node utilization and KV usage."""

from __future__ import annotations

from pathlib import Path

from vllm_helix.sim.run import SimReport


def write_plots(report: SimReport, out_dir: str | Path) -> list[Path]:
    """Write throughput.png, latency_cdf.png, utilization.png, kv_usage.png into out_dir; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series, paths = report.series, []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)

    tp = series["throughput"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(tp["time_s"], tp["total_tokens_per_s"], label="total (prompt + decode)")
    ax.plot(tp["time_s"], tp["decode_tokens_per_s"], label="decode")
    ax.axhline(report.max_flow, color="gray", linestyle="--", label=f"max flow {report.max_flow:.0f}")
    for t in report.window_s:
        ax.axvline(t, color="black", linewidth=0.5)
    ax.set(xlabel="time (s)", ylabel="tokens/s", title="Throughput over time (window marked)")
    ax.legend()
    save(fig, "throughput.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    for key, label in (("prompt_latency_cdf", "prompt"), ("decode_latency_cdf", "decode")):
        ax.plot(series[key]["seconds"], series[key]["fraction"], label=label)
    ax.set(xlabel="latency (s)", ylabel="fraction of iterations", title="Latency CDF (window)")
    ax.legend()
    save(fig, "latency_cdf.png")

    for key, name, title in (("utilization", "utilization.png", "Node utilization"),
                             ("kv_usage", "kv_usage.png", "Real KV-cache usage")):
        fig, ax = plt.subplots(figsize=(8, 4))
        data = series[key]
        names = list(data)
        if names:
            image = ax.imshow([data[n] for n in names], aspect="auto", interpolation="nearest",
                              vmin=0, vmax=1, cmap="viridis",
                              extent=(series["sample_time_s"][0] if series["sample_time_s"] else 0,
                                      series["sample_time_s"][-1] if series["sample_time_s"] else 1,
                                      len(names) - 0.5, -0.5))
            ax.set_yticks(range(len(names)), names, fontsize=6)
            fig.colorbar(image, ax=ax)
        ax.set(xlabel="time (s)", title=title)
        save(fig, name)
    return paths
