"""Fixtures: tiny hand-computable plans (see tiny_plans.py)."""

import pytest
from tiny_plans import make_plan

from vllm_helix.planner.cluster import COORDINATOR as C


@pytest.fixture
def one_node():
    return make_plan({"a": (0, 4)}, [(C, "a"), ("a", C)])


@pytest.fixture
def series():
    return make_plan({"a": (0, 2), "b": (2, 4)}, [(C, "a"), ("a", "b"), ("b", C)])


@pytest.fixture
def parallel():
    return make_plan({"a": (0, 4), "b": (0, 4)}, [(C, "a"), ("a", C), (C, "b"), ("b", C)])
