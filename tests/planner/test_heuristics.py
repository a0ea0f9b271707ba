"""Heuristic placements reproduce the reference's published layouts and are deterministic."""

import dataclasses

import pytest
from checks import PUBLISHED, check_flow

from vllm_helix.errors import InfeasiblePlacement
from vllm_helix.planner.examples import reference_example
from vllm_helix.planner.place import place


@pytest.mark.parametrize("method", ["petals", "swarm", "homogeneous"])
def test_heuristics_reproduce_reference_layouts(method):
    ref = reference_example(method)
    plan = place(ref.cluster, ref.model, method, seed=0)
    assert dict(plan.placement.ranges) == dict(ref.placement.ranges)
    assert plan.flow.value == pytest.approx(PUBLISHED[method], rel=1e-4)
    check_flow(plan.flow, plan.placement, ref.model.num_layers, plan.partial_inference)


def test_seed_changes_petals_but_is_deterministic():
    ex = reference_example("ilp")
    a, b = (place(ex.cluster, ex.model, "petals", seed=7) for _ in range(2))
    assert a.placement == b.placement
    assert a.placement != place(ex.cluster, ex.model, "petals", seed=0).placement


def test_model_that_does_not_fit_fails_fast():
    ex = reference_example("ilp")
    few = dataclasses.replace(ex.cluster, nodes=ex.cluster.nodes[:3])  # L4, T4, T4: 15 of 80 layers
    for method in ("petals", "swarm"):
        with pytest.raises(InfeasiblePlacement, match="holds at most 15 of the model's 80 layers"):
            place(few, ex.model, method)
    with pytest.raises(InfeasiblePlacement, match="cannot form even one full pipeline"):
        place(few, ex.model, "homogeneous")
