"""write_plots produces the four PNGs."""

from vllm_helix.sim.plots import write_plots
from vllm_helix.sim.run import SimConfig, simulate


def test_write_plots(parallel, tmp_path):
    report = simulate(parallel, SimConfig(mode="offline", duration_s=20, warmup_s=5, sample_interval_s=2))
    paths = write_plots(report, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["kv_usage.png", "latency_cdf.png", "throughput.png", "utilization.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
