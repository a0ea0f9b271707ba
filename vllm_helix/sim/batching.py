"""The batches a vllm-helix server keeps in flight: vLLM's engine loop with the Helix scheduler, simulated.

Without this the simulator batches, at every node, whatever is queued there (the reference's model). A real
vllm-helix server batches at the coordinator instead (coordinator/executor.py, scheduler.py, batches.py):
- vLLM's scheduler forms a step from the requests that have work now — running ones whose last token came back
  (one decode token each, or the next chunk of their prompt) first, then new ones — under the token budget
  (`--max-num-batched-tokens`, prompts chunked to fit) and `--max-num-seqs` running requests;
- a step carries the requests of one route (HelixScheduler's lanes), preferring a route with no step in flight;
- the engine keeps up to `--helix-depth` steps in flight (default one per node of the plan) and forms the next
  one when a step comes back (steps return in completion order, patches/batch_queue.py);
- every node runs a step as one batch, in the order steps reach it; the step's tokens come back when its last
  request's token does, and the prompt's pass samples the first output token.
So 16 requests on a 3-node chain travel as ~3 steps of ~5 requests, not as one batch of 16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vllm_helix.errors import ClusterSpecError
from vllm_helix.sim.node import Iteration

if TYPE_CHECKING:
    from vllm_helix.sim.coordinator import Coordinator, Query


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """The `vllm serve --executor helix` settings that shape its steps."""

    depth: int = 0  # --helix-depth: steps in flight; 0 = one per node of the plan
    max_num_batched_tokens: int = 2048  # vLLM's token budget per step
    max_num_seqs: int = 256  # vLLM's cap on running requests

    def __post_init__(self) -> None:
        if self.depth < 0:
            raise ClusterSpecError(f"depth must be >= 0 (0 = one per node), got {self.depth}")
        for name in ("max_num_batched_tokens", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise ClusterSpecError(f"{name} must be >= 1, got {getattr(self, name)}")


class EngineStep:
    """One step in flight: its iterations, one per request, all on one route."""

    __slots__ = ("lane", "size", "back")

    def __init__(self, lane: tuple[str, ...], size: int):
        self.lane, self.size = lane, size
        self.back: list[Iteration] = []  # iterations whose token reached the coordinator


class EngineSteps:
    def __init__(self, coordinator: Coordinator, limits: EngineLimits, nodes: int):
        self.coord, self.limits = coordinator, limits
        self.depth = limits.depth or max(1, nodes)
        self.running: list[Query] = []  # started, in the order vLLM scheduled them first
        self.waiting: list[Query] = []  # admitted on a route, not started
        self.in_flight: dict[tuple[str, ...], int] = {}  # lane -> steps in flight
        self.wake_pending = False

    def add(self, q: Query) -> None:
        q.lane = tuple(node.name for node in q.nodes)
        self.waiting.append(q)
        self.wake()

    def wake(self) -> None:
        """Schedule after the other events of this instant, so requests arriving together share a step."""
        if not self.wake_pending:
            self.wake_pending = True
            self.coord.loop.at(self.coord.loop.now, self._schedule)

    def _schedule(self, _=None) -> None:
        self.wake_pending = False
        while sum(self.in_flight.values()) < self.depth and self._issue():
            pass

    def _issue(self) -> bool:
        # vLLM counts a prompt chunk computed once scheduled: the next chunk may follow it before it is back
        ready = [q for q in self.running if q.prefilled < q.prompt_len or not q.in_flight] + self.waiting
        if not ready:
            return False
        lane = next((q.lane for q in ready if not self.in_flight.get(q.lane)), ready[0].lane)
        budget, room = self.limits.max_num_batched_tokens, self.limits.max_num_seqs - len(self.running)
        now, picked = self.coord.loop.now, []
        for q in ready:
            if budget <= 0:
                break
            if q.lane != lane:
                continue
            if q in self.waiting:
                if room <= 0:
                    continue
                room -= 1
                self.waiting.remove(q)
                self.running.append(q)
            if q.prefilled < q.prompt_len:
                tokens = min(q.prompt_len - q.prefilled, budget)
                picked.append(Iteration(q, True, tokens, q.prefilled, now))
                q.prefilled += tokens
            else:
                tokens = 1
                self.coord.router.on_decode_step(q.id)
                picked.append(Iteration(q, False, 1, q.done_tokens, now))
            budget -= tokens
            q.in_flight += 1
        if not picked:
            return False
        step = EngineStep(lane, len(picked))
        self.in_flight[lane] = self.in_flight.get(lane, 0) + 1
        for it in picked:
            it.step = step
            self.coord.send(it)
        return True

    def back(self, it: Iteration) -> None:
        """An iteration's token reached the coordinator; the step is done when all of them have."""
        step = it.step
        step.back.append(it)
        if len(step.back) < step.size:
            return
        self.in_flight[step.lane] -= 1
        for done in step.back:
            done.query.in_flight -= 1
            if self.coord.step_done(done):
                self.running.remove(done.query)
        self.wake()
