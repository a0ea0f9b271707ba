"""HelixScheduler: vLLM's scheduler, admitting a request only when the router finds it a route.

The shape of vllm-spyre's scheduler: before `schedule()`, waiting requests the router cannot place
with KV room on every hop are set aside, vLLM schedules the rest, and they are put back in order.
Routes are released when requests finish or abort (`_free_request`). Requests whose node failed are
finished with an error through vLLM's own error path (FINISHED_ERROR -> finish_reason "error").
"""

from __future__ import annotations

import logging

from vllm.v1.core.sched.scheduler import Scheduler

from vllm_helix.executor.coordinator import current

logger = logging.getLogger(__name__)


class HelixScheduler(Scheduler):
    def schedule(self, *args, **kwargs):
        routes = current().routes
        held, impossible = [], []
        for request in list(self.waiting):
            rid = request.request_id
            if rid in routes.routes:
                continue
            if not routes.admit(rid, request.num_prompt_tokens, request.max_tokens):
                (impossible if routes.never_fits() else held).append(request)
        if impossible:  # held out of this schedule, finished with an error at the next update
            logger.error("requests %s need more KV cache than the cluster has", [r.request_id for r in impossible])
            self._fail_next_update(r.request_id for r in impossible)
            held += impossible
        if held:
            self.waiting.remove_requests(held)
        try:
            return super().schedule(*args, **kwargs)
        finally:
            if held:
                self.waiting.prepend_requests(held)

    def update_from_output(self, scheduler_output, model_runner_output):
        failed = current().book.take_failed()
        if failed:
            logger.error("requests failed on the cluster: %s", failed)
            self._fail_next_update(failed)
        return super().update_from_output(scheduler_output, model_runner_output)

    def _fail_next_update(self, request_ids) -> None:
        # vLLM finishes the ids in this set with FINISHED_ERROR and emits their outputs in
        # update_from_output (its path for requests that cannot go on); checked by test_vllm_compat.
        self.encoder_cache_mismatch_reqs.update(rid for rid in request_ids if rid in self.requests)

    def _free_request(self, request, *args, **kwargs):
        current().routes.release(request.request_id)
        return super()._free_request(request, *args, **kwargs)

