"""What a plan serves, not what it bounds: a Little's-law estimate from KV room and round-trip time.

Max flow assumes every node runs at its typical batch. Serving keeps a bounded number of requests in flight
(each holds KV on every node of its route), and each decode token waits for one round trip through its
route, so decode throughput = requests in flight / round-trip time (Little's law), capped by the flow:

* requests in flight N: node i carries the share f_i / F of the requests and keeps (prompt + output / 2)
  tokens per layer per request; admission stops at `kv_watermark` of its slots (the reference's KV
  expectation), so N = min_i watermark * slots_i * F / (f_i * k_i * context);
* round trip R(N): every route is a chain of nodes, and requests coalesce into one batch per node
  (helix-spec §6.3), so the flow-weighted route time is sum_i (f_i / F) * k_i * t_decode_i(N f_i / F) plus
  the flow-weighted link latencies;
* estimate = min(N / R(N), max flow * decode share).

It is a ranking aid (which candidates to simulate first), not a replacement for the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_helix.planner.cluster import COORDINATOR
from vllm_helix.planner.plan import Plan
from vllm_helix.planner.profiles import profile_for
from vllm_helix.planner.router import default_kv_capacity

KV_WATERMARK = 0.8  # the offline feeder launches while the expected KV bottleneck is <= 0.8 (helix-spec §8.1)
# azure_conv means (LengthSampler("azure_conv")): prompt 763 tokens, output 232; a request holds the prompt
# plus on average half its output while it decodes, and decode tokens are output / (prompt + output) of all.
MEAN_PROMPT, MEAN_OUTPUT = 763.0, 232.0


@dataclass(frozen=True, slots=True)
class ServingEstimate:
    in_flight: float  # requests the KV room admits
    round_trip_s: float  # flow-weighted decode round trip at that concurrency
    decode_tokens_per_s: float  # min(in_flight / round_trip, max flow * decode share)


def estimate(plan: Plan, prompt: float = MEAN_PROMPT, output: float = MEAN_OUTPUT) -> ServingEstimate:
    """Little's-law decode throughput of `plan` (see the module docstring); needs GPU profiles."""
    flow, total = plan.flow, plan.flow.value
    if total <= 0:
        return ServingEstimate(0.0, float("inf"), 0.0)
    slots = default_kv_capacity(plan.cluster, plan.model, plan.placement)
    context = prompt + output / 2
    shares = {n: flow.node_flow.get(n, 0.0) / total for n in plan.placement.ranges}
    used = {n: s for n, s in shares.items() if s > 1e-9}
    in_flight = float("inf")
    for n, s in used.items():  # requests in flight that the tightest node's KV room allows
        in_flight = min(in_flight, KV_WATERMARK * slots[n] / (s * plan.placement[n].size * context))
    latency = sum((f * plan.cluster.link(a, b).latency_s for (a, b), f in flow.arc_flow.items()), 0.0) / total
    compute = 0.0
    for name, share in used.items():
        profile = profile_for(plan.model, plan.cluster.node(name).gpu_type)
        table = profile.decode_latency
        batch = min(max(in_flight * share, table.xs[0]), table.xs[-1])
        compute += share * plan.placement[name].size * table(batch)
    round_trip = compute + latency
    cap = total * output / (prompt + output)
    return ServingEstimate(in_flight, round_trip, min(in_flight / round_trip, cap))


def route_hops(plan: Plan) -> float:
    """Flow-weighted number of nodes a token passes (the pipeline depth the router will see)."""
    total = plan.flow.value
    return sum(f for (a, _b), f in plan.flow.arc_flow.items() if a != COORDINATOR) / total if total else 0.0
