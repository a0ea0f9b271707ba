"""Plan-vs-real checks: is each node as fast as the plan assumed?

Every node reports its compute time and the shape of what it ran (batches, prefill tokens, decode steps;
`wire.Busy`). Over a sliding window the coordinator predicts how long the plan's throughput numbers say
those batches should have taken, and compares: the ratio predicted / measured is the node's measured
throughput as a share of its planned throughput, whatever the batch mix (a fixed tokens/s would call a
node serving small decode batches slow). With a profile (measured or bundled) the prediction is the
profile's per-batch overhead plus k layers at the window's mean batch (and the last range's sampling);
without one, the node's start-up probe (below), or failing that k layers of the planner's roofline estimate at
that batch. A node more than `TOLERANCE` off for
`HOLD_S` gets one warning with the commands that fix the plan (re-profile, re-plan), and another when it is back
within the tolerance. The same ratios weigh the routes (coordinator/routing.py: a slow node gets fewer requests).

Every node also times a start-up probe (`PartialLayerWorker.calibrate`: the same prefill chunk and decode step on
every node, all at once when the coordinator asks) and sends it in its Hello: the plan's price of those batches
over their measured time is the node's ratio before its first request (logged, exported), which the routes follow
with --helix-follow-probes. Without a profile the probe also prices the node's later batches (`OwnSpeed`).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass

from vllm_helix import wire as p
from vllm_helix.errors import HelixError
from vllm_helix.planner.plan import Plan
from vllm_helix.planner.profiles import GPUProfile, profile_for
from vllm_helix.planner.throughput import EstimatedThroughput

logger = logging.getLogger("vllm_helix.drift")


def env_number(name: str, default: float, low: float, high: float) -> float:
    """A tuning knob from the environment; a value that is no number in [low, high] is named and ignored."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        logger.warning("%s=%r is not a number in [%g, %g]: using %g", name, raw, low, high, default)
        return default
    return value


TOLERANCE = env_number("HELIX_DRIFT_TOLERANCE", 0.25, 0.0, 10.0)  # a shared test host widens it
HOLD_S = env_number("HELIX_DRIFT_HOLD_S", 60.0, 0.0, 86400.0)  # a minute; tests shorten it
WINDOW_S = 10.0  # measured vs predicted over the last this many seconds
MIN_BUSY_S = 0.5  # a window with less compute says nothing about speed
HISTORY = 600  # reports kept: a window of up to 10 minutes at one report a second


@dataclass(frozen=True, slots=True)
class Work:
    """Cumulative counts of one node (as in its Busy reports)."""

    busy_s: float = 0.0
    batches: int = 0
    tokens: int = 0
    decode_seqs: int = 0

    @classmethod
    def of(cls, busy: p.Busy) -> Work:
        return cls(busy.busy_s, busy.batches, busy.tokens, busy.decode_seqs)

    def minus(self, other: Work) -> Work:
        return Work(self.busy_s - other.busy_s, self.batches - other.batches, self.tokens - other.tokens,
                    self.decode_seqs - other.decode_seqs)


class Expectation:
    """What the plan says a node's batches cost."""

    def __init__(self, plan: Plan, node: str):
        self.layers = plan.placement.ranges[node].size
        self.samples = plan.placement.ranges[node].end == plan.model.num_layers  # the last range
        self.capacity = plan.flow.node_capacity.get(node, 0.0)  # tokens/s through its layers
        self.spec, self.model = plan.cluster.node(node), plan.model
        self.profile: GPUProfile | None
        try:
            self.profile = profile_for(plan.model, self.spec.gpu_type)
        except HelixError:
            self.profile = None  # an estimated plan: the roofline the planner used

    def seconds(self, work: Work, context: float | None = None) -> float:
        """What `work` costs by the plan; `context`: the decodes' mean tokens cached, where it is known."""
        if work.batches <= 0:
            return 0.0
        if self.profile is None:
            return self._estimated_seconds(work)
        prompt = (work.tokens - work.decode_seqs) / work.batches  # mean prefill tokens per batch
        decodes = work.decode_seqs / work.batches
        f = self.profile
        per_layer = (f.prompt_latency(prompt) if prompt else 0.0) + \
            (f.decode_seconds(decodes, context) if decodes else 0.0)
        sampling = f.sampling_seconds(round(decodes) or 1) if self.samples else 0.0
        return work.batches * (f.step_overhead_s + sampling + self.layers * per_layer)

    def _estimated_seconds(self, work: Work) -> float:
        """The planner's roofline at the window's mean batch: a small decode batch costs the weights' read, not
        its few tokens (a flat tokens/s would call a node serving small batches slow)."""
        try:
            per_layer = EstimatedThroughput().layer_seconds(self.spec, self.model, work.tokens / work.batches)
        except HelixError:  # a device the roofline does not know: the plan's capacity is all there is
            return work.tokens / self.capacity if self.capacity > 0 else 0.0
        return work.batches * self.layers * per_layer


class OwnSpeed:
    """A node's batch cost as its start-up probe measured it: seconds = a per batch + b per token, the line through
    its prefill chunk and its decode step. It prices a window's batch mix on that node's own hardware, where the
    roofline cannot (on a CPU it called the replica with the larger decode batches the slower one). `ratio`: the
    probe's measured / planned throughput."""

    def __init__(self, probe: p.Calibration, ratio: float):
        self.ratio = ratio
        per_token = (probe.prefill_s - probe.decode_s) / (probe.prefill_tokens - probe.decode_seqs) \
            if probe.prefill_tokens > probe.decode_seqs else probe.prefill_s / probe.prefill_tokens
        self.per_token = max(per_token, 0.0)
        self.per_batch = max(probe.decode_s - self.per_token * probe.decode_seqs, 0.0)

    def seconds(self, work: Work) -> float:
        return work.batches * self.per_batch + work.tokens * self.per_token


class NodeDrift:
    """One node's measured/planned throughput ratio over a sliding window, and whether it drifts."""

    def __init__(self, plan: Plan, node: str, plan_path: str, model_path: str, since: float = 0.0):
        self.node, self.expect = node, Expectation(plan, node)
        self.gpu = self.expect.spec.gpu_type
        self.plan_path, self.model_path = plan_path, model_path
        # from nothing done at `since`: the first report is measured too (a short first load, a warm-up)
        self.history: deque[tuple[float, Work]] = deque([(since, Work())], maxlen=HISTORY)
        self.ratio: float | None = None  # measured throughput / planned
        self.measured_at = float("-inf")  # when `ratio` was last measured
        self.own: OwnSpeed | None = None  # the batch costs its start-up probe measured
        self.off_since: float | None = None
        self.warned = False

    def calibrate(self, probe: p.Calibration) -> None:
        """The node's start-up probe: its ratio before any request, and (without a profile) how it prices batches."""
        if probe.prefill_s <= 0 or probe.decode_s <= 0 or probe.prefill_tokens < 1 or probe.decode_seqs < 1:
            return
        planned = self.expect.seconds(Work(batches=1, tokens=probe.prefill_tokens)) + \
            self.expect.seconds(Work(batches=1, tokens=probe.decode_seqs, decode_seqs=probe.decode_seqs),
                                context=probe.decode_context)
        self.own = OwnSpeed(probe, planned / (probe.prefill_s + probe.decode_s))
        logger.info("node %s start-up probe: %d-token prefill %.1f ms, decode step of %d %.1f ms: %.0f %% of its "
                    "planned throughput", self.node, probe.prefill_tokens, 1e3 * probe.prefill_s, probe.decode_seqs,
                    1e3 * probe.decode_s, 100 * self.own.ratio)

    @property
    def calibrated(self) -> float | None:
        """The ratio of its start-up probe."""
        return self.own.ratio if self.own else None

    def update(self, now: float, work: Work) -> None:
        if work.busy_s < self.history[-1][1].busy_s:  # its counters started again: a new process
            self.history.clear()
            self.history.append((now, Work()))
        self.history.append((now, work))
        # the last WINDOW_S, or longer until it holds MIN_BUSY_S of compute: a node given little work (one
        # measured slow gets few requests) is still measured, not judged by its old speed for ever
        while len(self.history) > 2 and now - self.history[1][0] >= WINDOW_S and \
                work.busy_s - self.history[1][1].busy_s >= MIN_BUSY_S:
            self.history.popleft()
        delta = work.minus(self.history[0][1])
        if delta.busy_s < MIN_BUSY_S:
            return  # too little compute in the window: keep the last verdict
        self.ratio, self.measured_at = self._measure(delta), now
        off = abs(self.ratio - 1) > TOLERANCE
        if not off:
            if self.warned:
                logger.info("node %s is back within %d %% of its planned throughput (%.0f %%)", self.node,
                            100 * TOLERANCE, 100 * self.ratio)
            self.off_since, self.warned = None, False
            return
        self.off_since = self.off_since if self.off_since is not None else now
        if not self.warned and now - self.off_since >= HOLD_S:
            self.warned = True
            logger.warning(self.advice())

    def _measure(self, delta: Work) -> float:
        """Measured / planned throughput over `delta`. Without a profile, the window is priced with the node's own
        probe and scaled by the probe's ratio: how fast it is now against its start-up, times how its start-up
        compared with the plan (the probe's shapes, not the window's mix, meet the roofline)."""
        if self.expect.profile is None and self.own is not None:
            return self.own.ratio * self.own.seconds(delta) / delta.busy_s
        return self.expect.seconds(delta) / delta.busy_s

    def routing_ratio(self, now: float, probes: bool = False) -> float | None:
        """The ratio for the routes to follow: measured within the last HOLD_S (a node given no work for that long,
        say after it was measured slow, gets its planned share back and is measured anew), where the plan's numbers
        are a profile. With `probes` (--helix-follow-probes) also the start-up probe's ratio, before a node is
        measured and after the hold, and the measured ratio of a node priced by its probe. The probes are opt-in
        because a second of work is as noisy as its host: nodes sharing a 2-core host, probing while others loaded,
        came out 1.45x and 20x apart for like hardware. The roofline alone cannot price a batch mix closely enough
        to compare nodes (on a CPU it called the replica with the larger decode batches the slower one)."""
        recent = now - self.measured_at <= HOLD_S
        if not probes:
            return self.ratio if recent and self.expect.profile is not None else None
        return self.ratio if recent and (self.expect.profile is not None or self.own is not None) else self.calibrated

    @property
    def drifting(self) -> bool:
        return self.warned

    def advice(self) -> str:
        assert self.ratio is not None
        return (f"node {self.node} runs at {100 * self.ratio:.0f} % of the throughput the plan assumed for "
                f"{HOLD_S:.0f} s (more than {100 * TOLERANCE:.0f} % off): the plan no longer matches this cluster. "
                f"Re-profile that host (`vllm-helix profile --model {self.model_path} --gpu {self.gpu} "
                f"-o PROFILES/{self.gpu}.json`), re-plan (`vllm-helix plan --cluster CLUSTER --model "
                f"{self.model_path} --profiles PROFILES --previous {self.plan_path} -o NEW_PLAN`) and restart "
                f"with the new plan")
