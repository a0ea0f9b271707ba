"""HelixScheduler: vLLM's scheduler, admitting a request only when the router finds it a route.

The shape of vllm-spyre's scheduler: before `schedule()`, waiting requests the router cannot place
with KV room on every hop are set aside, vLLM schedules the rest, and they are put back in order.
Routes are released when requests finish or abort (`_free_request`). Requests whose node failed are
finished with an error through vLLM's own error path (FINISHED_ERROR -> finish_reason "error").

Each batch carries the requests of one route (its "lane"): a batch finishes when its slowest request
does, so mixing a fast replica's requests with a slow one's would hold the fast nodes back. With the
completion-order batch queue (patches/batch_queue.py) every route then runs at its own pace.

Failover: requests whose route lost a node (the coordinator queues them) are preempted here, on the engine
thread, through vLLM's own recompute path (`_preempt_request`: back to waiting, KV blocks freed, any output
still in flight dropped) and admitted again on a route of live nodes; vLLM then schedules them as resumed
requests, which the nodes prefill from all their tokens (prompt + generated). When lost nodes leave no route
a request fits, it waits up to --helix-reroute-timeout for them to come back, then fails naming them.

Async scheduling (--helix-async): the scheduler is then vLLM's AsyncScheduler, which schedules a request's next
decode step before its token is back (output placeholders; the nodes hand the token over, `node/async_feed.py`).
Each decoding request keeps to one of `depth` classes and is scheduled every `depth`-th batch, the cadence vLLM's
own AsyncScheduler keeps for pipeline parallelism (`next_decode_eligible_step`): a chain of `depth` nodes then
has the next batch of each class waiting at its first node while the previous one is still on the others.
Structured-output requests are the exception: each step waits for the token before it, as vLLM computes the next
grammar mask from it (vLLM defers such a step's sampling to the oldest batch's output, which the completion-order
batch queue does not promise to hand back first).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from vllm_helix.coordinator.coordinator import current
from vllm_helix.options import helix_options, pipeline_depth

logger = logging.getLogger(__name__)


class HelixScheduler(AsyncScheduler):
    """vLLM's Scheduler with Helix admission; vLLM's AsyncScheduler under --helix-async (its two overrides are
    skipped otherwise, so the synchronous path is vLLM's Scheduler as it is)."""

    running: list[Request]  # vLLM's (annotated for the type checker)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stuck: dict[str, float] = {}  # request id -> since when lost nodes leave it no route
        options = helix_options(self.vllm_config.additional_config)
        self.async_chain: bool = options["async"]
        self.stagger = pipeline_depth(options)
        self._decode_class: dict[str, int] = {}  # async: request -> the batches it decodes in (step mod stagger)

    def _update_after_schedule(self, scheduler_output) -> None:
        if not self.async_chain:
            Scheduler._update_after_schedule(self, scheduler_output)
            return
        super()._update_after_schedule(scheduler_output)
        for rid in scheduler_output.num_scheduled_tokens:
            request = self.requests[rid]
            if request.is_prefill_chunk:
                continue
            if request.use_structured_output:
                # its grammar's next mask needs this step's token: not scheduled again before that is back
                request.next_decode_eligible_step = sys.maxsize
            else:
                request.next_decode_eligible_step = self._next_turn(rid)

    def _update_request_with_output(self, request, new_token_ids, is_stale=False):
        if not self.async_chain:
            return Scheduler._update_request_with_output(self, request, new_token_ids, is_stale)
        output = super()._update_request_with_output(request, new_token_ids, is_stale)
        if request.use_structured_output and not request.num_output_placeholders:
            request.next_decode_eligible_step = 0
        return output

    def _preempt_request(self, request, *args, **kwargs):
        super()._preempt_request(request, *args, **kwargs)
        # it starts over from its prompt: any step may take it again, and it joins a class when it decodes again
        request.next_decode_eligible_step = 0
        self._decode_class.pop(request.request_id, None)

    def _next_turn(self, rid: str) -> int:
        """The next step at which this decoding request may be scheduled again: its class's next turn; a request
        that starts decoding joins the smallest class (so the batches in flight stay even)."""
        step = self.current_step
        if rid not in self._decode_class:
            sizes = Counter(self._decode_class.values())
            turns = [step + d for d in range(1, self.stagger + 1)]
            self._decode_class[rid] = min(turns, key=lambda t: sizes[t % self.stagger]) % self.stagger
        return step + (self._decode_class[rid] - step - 1) % self.stagger + 1

    def _schedulable(self, request) -> bool:
        """It has tokens to compute now: none in a batch in flight; under async scheduling, its class's turn."""
        if not self.async_chain:
            return request.num_computed_tokens < request.num_tokens
        return (request.num_computed_tokens < request.num_tokens + request.num_output_placeholders
                and self.current_step + 1 >= request.next_decode_eligible_step)

    def schedule(self, *args, **kwargs):
        coordinator = current()
        routes = coordinator.route_book()
        self._reroute(coordinator.take_reroutes())
        held: list[Request] = []
        impossible: list[Request] = []
        now = time.monotonic()
        for request in list(self.waiting):
            rid = request.request_id
            if rid in routes.routes:
                continue
            # a preempted request is recomputed from all its tokens: the same worst case as at first
            if routes.admit(rid, request.num_tokens, request.max_tokens - request.num_output_tokens):
                self._stuck.pop(rid, None)
            elif not routes.never_fits():
                held.append(request)
            elif not routes.lost:
                impossible.append(request)
            elif now - self._stuck.setdefault(rid, now) < coordinator.options["reroute_timeout_s"]:
                held.append(request)  # lost nodes may come back
            else:
                logger.error("request %s found no complete route with KV room for %.0f s; %s", rid,
                             now - self._stuck.pop(rid), coordinator.members.describe())
                impossible.append(request)
        if impossible:  # held out of this schedule, finished with an error at the next update
            if not routes.lost:
                logger.error("requests %s need more KV cache than the cluster has",
                             [r.request_id for r in impossible])
            self._fail_next_update(r.request_id for r in impossible)
            coordinator.metrics.on_failed(len(impossible))
        if held and routes.live_flow <= 0 and not self.running:
            time.sleep(0.05)  # nothing can run until a node comes back: do not spin the engine loop
        hidden_running, hidden_waiting = self._other_lanes(routes.routes, set(held) | set(impossible))
        running: list[Request] = self.running
        if hidden_running:
            self.running = [r for r in running if r not in hidden_running]
        if hidden_waiting:
            self.waiting.remove_requests(hidden_waiting)
        try:
            return _with_resumed_tokens(super().schedule(*args, **kwargs), self.requests)
        finally:
            if hidden_running:  # hidden ones keep their places; newly admitted ones go last, as in vLLM
                still, before = set(self.running), set(running)
                self.running = [r for r in running if r in hidden_running or r in still] + [
                    r for r in self.running if r not in before]
            if hidden_waiting:
                self.waiting.prepend_requests(hidden_waiting)

    def _other_lanes(self, routes: dict[str, list[str]], unroutable: set) -> tuple[set, list]:
        """Requests to hide from this schedule: running and waiting ones of other routes than the chosen
        one (a route with no batch in flight first), unroutable ones, and waiting ones beyond the free
        running slots (vLLM counts only the running requests it sees)."""
        def lane(request) -> tuple[str, ...] | None:
            route = routes.get(request.request_id)
            return tuple(route) if route else None

        ready = [r for r in self.running if self._schedulable(r)] + [r for r in self.waiting if r not in unroutable]
        busy = {lane(r) for r in self.running if not self._schedulable(r)}
        first = next((r for r in ready if lane(r) not in busy), ready[0] if ready else None)
        chosen = lane(first) if first is not None else None
        hidden_running = {r for r in self.running if chosen is not None and lane(r) != chosen}
        room = self.max_num_running_reqs - len(self.running)
        hidden_waiting = []
        for request in self.waiting:  # in queue order, so that prepending them back keeps it
            if request in unroutable or lane(request) != chosen or room <= 0:
                hidden_waiting.append(request)
            else:
                room -= 1
        return hidden_running, hidden_waiting

    def _reroute(self, request_ids: set[str]) -> None:
        """Move these requests off their route: preempt the running ones (vLLM recomputes them), release the
        routes; the scheduler admits them again on live nodes. On the engine thread, as vLLM's own preemption."""
        moved = []
        now = time.monotonic()
        routes = current().route_book()
        for rid in sorted(request_ids):
            request = self.requests.get(rid)
            if request is None or request.is_finished():
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
                # drop_stale_output: a token still in flight for it belongs to the old route, never appended
                self._preempt_request(request, now, drop_stale_output=True)
                self.prev_step_scheduled_req_ids.discard(rid)  # vLLM then sends all its tokens when it resumes
            routes.release(rid)
            moved.append(rid)
        if moved:
            logger.info("Helix: recomputing %d requests on other routes: %s", len(moved), moved)
            current().retire(moved)

    def update_from_output(self, scheduler_output, model_runner_output):
        failed = current().book.take_failed()
        if failed:
            logger.error("requests failed on the cluster: %s", failed)
            self._fail_next_update(failed)
        return super().update_from_output(scheduler_output, model_runner_output)

    def _fail_next_update(self, request_ids) -> None:
        # vLLM finishes the ids in this set with FINISHED_ERROR and emits their outputs in
        # update_from_output (its path for requests that cannot go on); the scheduler-internals seam (seams.py).
        self.encoder_cache_mismatch_reqs.update(rid for rid in request_ids if rid in self.requests)

    def _free_request(self, request, *args, **kwargs):
        current().route_book().release(request.request_id)
        self._stuck.pop(request.request_id, None)
        self._decode_class.pop(request.request_id, None)
        return super()._free_request(request, *args, **kwargs)


def _with_resumed_tokens(output, requests):
    """Every request resumed from preemption carries all its tokens (vLLM leaves them out for one it scheduled in
    the step before): the nodes of its new route prefill all of them."""
    cached = output.scheduled_cached_reqs
    for rid in cached.resumed_req_ids:
        if rid not in cached.all_token_ids:
            cached.all_token_ids[rid] = requests[rid].all_token_ids.copy()
    return output
