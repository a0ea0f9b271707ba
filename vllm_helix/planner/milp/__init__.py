"""MILP model placement (helix-spec §4.1, tightened per §9): `solve_milp` is the `milp` method of `place`."""

from vllm_helix.planner.milp.solve import solve_milp

__all__ = ["solve_milp"]
