"""The bundled reference example (helix-spec §8.2): single24 with LLaMA-2-70B and its published layouts."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.cluster import ClusterSpec
from vllm_helix.planner.model import BUILTIN_MODELS, ModelSpec
from vllm_helix.planner.placement import Placement

REFERENCE_METHODS = ("ilp", "petals", "swarm", "homogeneous")


def reference_dir() -> Path:
    return Path(str(resources.files("vllm_helix.data") / "reference" / "helix-examples"))


@dataclass(frozen=True, slots=True)
class ReferenceExample:
    cluster: ClusterSpec
    model: ModelSpec
    placement: Placement
    partial_inference: bool  # Petals layouts let a node run a suffix of its range


def reference_example(method: str = "ilp", cluster_file: str = "single24.ini") -> ReferenceExample:
    """The reference's single24 cluster (or another bundled topology) with one of its published layouts."""
    from vllm_helix.planner.ini import read_cluster_ini, read_solution_ini

    if method not in REFERENCE_METHODS:
        raise ClusterSpecError(f"unknown reference layout {method!r}; choose from {REFERENCE_METHODS}")
    cluster = read_cluster_ini(reference_dir() / cluster_file)
    placement = read_solution_ini(reference_dir() / "layouts" / method / f"{method}_sol.ini", cluster)
    return ReferenceExample(cluster, BUILTIN_MODELS["llama2-70b"], placement, method == "petals")
