"""Bad input gives HelixError subclasses with a clear message, never a bare traceback."""

from __future__ import annotations

import dataclasses

import pytest

from vllm_helix.errors import ClusterSpecError, HelixError
from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.sim.run import SimConfig, simulate


def test_plan_for_another_cluster_is_rejected(one_node):
    other = ClusterSpec(tuple(dataclasses.replace(n, name="zz") for n in one_node.cluster.nodes), ())
    with pytest.raises(ClusterSpecError, match="does not have"):
        simulate(one_node, SimConfig(mode="online", trace=()), cluster=other)


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "sideways"}, "mode must be"),
    ({"scheduler": "magic"}, "scheduler must be"),
    ({"duration_s": -1}, "duration_s must be > 0"),
])
def test_bad_config_is_rejected(kwargs, message):
    with pytest.raises(HelixError, match=message):
        SimConfig(**kwargs)


def test_bad_trace_file_is_rejected(one_node, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("arrival_time_s,input_tokens,output_tokens\n-1,5,5\n")
    with pytest.raises(ClusterSpecError, match="bad.csv:2"):
        simulate(one_node, SimConfig(mode="online", trace=str(path)))
