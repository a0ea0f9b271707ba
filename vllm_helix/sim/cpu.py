"""Where a node's batch runs: its own device (the default), or cores it shares with other nodes of its host.

A node's profile is its *solo* speed. Nodes that share a host's `cores` (the cluster's `host_cores`: e.g. local
nodes on a small CPU machine, one busy core each) share them by processor sharing: with n batches running, each
progresses at min(1, cores / n) of its solo speed, so a batch's finish moves whenever another starts or ends.
A node under a CPU quota (the cluster's `cpu_quota`, a cgroup `cpu.max` of quota/period in cores) runs at that
speed until it has used `quota x period` CPU seconds in the current period, then waits for the next one (as the
kernel's CFS bandwidth control throttles it): a node idle part of the time is throttled less than a busy one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from vllm_helix.sim.loop import EventLoop

CFS_PERIOD_S = 0.1  # the kernel's default cpu.max period
_EPS = 1e-12


@dataclass(slots=True)
class _Job:
    work_s: float  # solo seconds left
    quota: float | None  # cores, or None: no quota
    started: float
    done: Callable[[float], None]  # called with the wall seconds the batch took
    throttled: bool = False  # its quota is used up until the period ends


class SharedCpu:
    """The cores of one host, shared by its nodes' batches (and each node's quota, if it has one)."""

    def __init__(self, loop: EventLoop, cores: float = math.inf, period_s: float = CFS_PERIOD_S):
        if not cores > 0:
            raise ValueError(f"a host needs > 0 cores, got {cores}")
        self.loop, self.cores, self.period_s = loop, cores, period_s
        self.jobs: dict[object, _Job] = {}
        self.used: dict[object, tuple[int, float]] = {}  # owner -> (period, CPU seconds used in it)
        self._last = loop.now
        self._version = 0  # only the latest scheduled wake-up counts

    def run(self, owner: object, work_s: float, done: Callable[[float], None], quota: float | None = None) -> None:
        """Run `work_s` solo seconds for `owner` (one batch at a time each); `done(wall_s)` when finished."""
        if quota is not None and not quota > 0:
            raise ValueError(f"a CPU quota must be > 0 cores, got {quota}")
        self._advance()
        self.jobs[owner] = _Job(work_s, quota, self.loop.now, done)
        self._schedule()

    def _rate(self) -> float:
        running = sum(not j.throttled for j in self.jobs.values())
        return min(1.0, self.cores / running) if running else 0.0

    def _period(self, t: float) -> int:
        return math.floor(t / self.period_s + 1e-9)

    def _used(self, owner: object, t: float) -> float:
        period, used = self.used.get(owner, (-1, 0.0))
        return used if period == self._period(t) else 0.0

    def _advance(self) -> None:
        """Account the time since the last event (one rate, one period: both change only at events)."""
        last, now = self._last, self.loop.now
        elapsed, rate = now - last, self._rate()
        self._last = now
        if elapsed <= 0 or rate <= 0:
            return
        for owner, job in self.jobs.items():
            if not job.throttled:
                job.work_s -= elapsed * rate
                if job.quota is not None:
                    self.used[owner] = (self._period(last), self._used(owner, last) + elapsed * rate)

    def _schedule(self) -> None:
        self._version += 1
        if not self.jobs:
            return
        now = self.loop.now
        for owner, job in self.jobs.items():
            job.throttled = job.quota is not None and \
                self._used(owner, now) >= job.quota * self.period_s * (1 - 1e-9)
        rate, wake = self._rate(), math.inf
        if any(j.quota is not None for j in self.jobs.values()):
            wake = (self._period(now) + 1) * self.period_s  # quotas refill
        for owner, job in self.jobs.items():
            if job.throttled or rate <= 0:
                continue
            wake = min(wake, now + job.work_s / rate)
            if job.quota is not None:
                wake = min(wake, now + (job.quota * self.period_s - self._used(owner, now)) / rate)
        self.loop.at(wake, self._wake, self._version)

    def _wake(self, version: int) -> None:
        if version != self._version:
            return  # a batch started since, and rescheduled it
        self._advance()
        now = self.loop.now
        finished = [(owner, job) for owner, job in self.jobs.items() if job.work_s <= _EPS * max(1.0, job.started)]
        for owner, _job in finished:
            del self.jobs[owner]
        self._schedule()
        for _owner, job in finished:
            job.done(now - job.started)
