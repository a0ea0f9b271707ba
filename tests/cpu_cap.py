"""A real CPU share cap for a process: a cgroup with a CFS quota (cgroup v2 `cpu.max`, or v1's cpu controller).
Needs root; `CpuCap.available()` says whether this host has it. Import as `from cpu_cap import CpuCap`."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

V2 = Path("/sys/fs/cgroup")
V1 = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 10_000  # a short period: a capped process runs in slices of at most this, not 100 ms bursts


class CpuCap:
    """At most `share` of one core (0.5 = half a core) for every process added, together; `share=None`: no
    limit, but `weight` times the default claim on the CPU when the host is contended (what a process with
    its own core would get, as far as a shared host can give it)."""

    def __init__(self, name: str, share: float | None, weight: int = 1):
        root = V2 if (V2 / "cgroup.subtree_control").exists() else V1
        self.parent = root
        self.path = root / f"helix-test-{name}-{os.getpid()}"
        self.path.mkdir(exist_ok=True)
        quota = -1 if share is None else max(1000, int(share * PERIOD_US))
        if root is V2:
            (self.path / "cpu.max").write_text(f"{'max' if quota < 0 else quota} {PERIOD_US}")
            (self.path / "cpu.weight").write_text(str(100 * weight))
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            (self.path / "cpu.shares").write_text(str(1024 * weight))

    @staticmethod
    def available() -> bool:
        if os.geteuid() != 0:
            return False
        if (V2 / "cgroup.subtree_control").exists():
            return "cpu" in (V2 / "cgroup.subtree_control").read_text().split()
        return (V1 / "cpu.cfs_quota_us").exists()

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into the cap; its children started later stay in it."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def enter(self) -> None:
        """For `preexec_fn`: the calling process joins the cap before it runs anything."""
        self.add(os.getpid())

    def close(self) -> None:
        for pid in (self.path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # exited meanwhile
                (self.parent / "cgroup.procs").write_text(pid)
        self.path.rmdir()

    def __enter__(self) -> CpuCap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
