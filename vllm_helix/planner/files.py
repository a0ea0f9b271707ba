"""Reading the planner's files: clusters, placements and plans, whatever their format.

The one place that knows file formats and dispatches on them (YAML cluster or reference `.ini` topology;
plan file, reference `*_sol.ini` or YAML mapping for a placement), so the format modules (`cluster`,
`ini`, `plan`) never import each other. Errors name the file and field (ClusterSpecError).

A plan file is parsed once per process: `load_plan` caches by path and modification time, so the
plugin, the scheduler and the executor of one process share one Plan (treat it as read-only).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from vllm_helix import text_files
from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.cluster import ClusterSpec, cluster_from_dict
from vllm_helix.planner.ini import read_cluster_ini, read_solution_ini
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.planner.plan import Plan, plan_from_dict


def read_yaml(path: str | Path, what: str = "file") -> Any:
    return text_files.read_yaml(Path(path), what)


def load_cluster(path: str | Path) -> ClusterSpec:
    """A cluster YAML file, or a reference `.ini` topology (see planner.ini)."""
    path = Path(path)
    if path.suffix == ".ini":
        return read_cluster_ini(path)
    return cluster_from_dict(read_yaml(path), source=str(path))


def load_plan(path: str | Path) -> Plan:
    """A plan file (parsed once per process while the file is unchanged)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ClusterSpecError(f"{path}: cannot read plan ({exc.strerror})") from None
    return _parse_plan(str(path.resolve()), str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _parse_plan(resolved: str, shown: str, mtime_ns: int, size: int) -> Plan:
    data = read_yaml(resolved, "plan")
    try:
        return plan_from_dict(data, shown)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ClusterSpecError):
            raise
        raise ClusterSpecError(f"{shown}: malformed plan: {exc!r}") from None


def is_plan(data: Any) -> bool:
    return isinstance(data, dict) and "helix_plan" in data


def load_placement(path: str | Path, cluster: ClusterSpec) -> Placement:
    """A reference `*_sol.ini`, a plan file, or a YAML mapping `node: [start, end]`."""
    path = Path(path)
    if path.suffix == ".ini":
        return read_solution_ini(path, cluster)
    data = read_yaml(path, "placement")
    if is_plan(data):
        return load_plan(path).placement
    if not isinstance(data, dict):
        raise ClusterSpecError(f"{path}: expected a mapping 'node: [start, end]'")
    ranges = {}
    for name, value in data.items():
        if not (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ClusterSpecError(f"{path}: {name}: expected [start, end] layer indices, got {value!r}")
        try:
            cluster.node(str(name))
        except ClusterSpecError as exc:
            raise ClusterSpecError(f"{path}: {exc}") from None
        ranges[str(name)] = LayerRange(*value)
    return Placement(ranges)
