"""Benchmark: the S1 simulation (skipped by default; run with --benchmark-only)."""

import pytest

from vllm_helix.sim.run import SimConfig, reference_s1_setup, simulate


@pytest.mark.benchmark(group="sim")
@pytest.mark.parametrize("mode", ["reference", "improved"])
def test_bench_s1(benchmark, mode):
    plan, kv = reference_s1_setup()
    config = SimConfig.reference_s1() if mode == "reference" else SimConfig.improved_s1()
    report = benchmark.pedantic(simulate, args=(plan, config, kv), rounds=1, iterations=1)
    benchmark.extra_info.update(cpu_s=report.cost["cpu_s"], ratio_to_max_flow=report.ratio_to_max_flow,
                                decode_tok_s=report.decode_throughput)
    assert report.cost["cpu_s"] < 20
