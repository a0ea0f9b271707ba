"""Translate vLLM scheduler batches into per-route steps, and node answers back into model outputs.

The coordinator runs no model: for every scheduled request it sends the first node of the request's
route what to compute (a prefill chunk — the node holds the prompt — or a decode step with the token
sampled last time), and waits for the last node's sampled token. A request that fails on a node is
answered with no token and reported to the scheduler, which finishes it with an error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vllm_helix import wire as p
from vllm_helix.trace import tracer
from vllm_helix.wire import COORDINATOR_PEER

if TYPE_CHECKING:
    from vllm.v1.core.sched.output import GrammarOutput, SchedulerOutput
    from vllm.v1.outputs import ModelRunnerOutput

# (request ids, sampled token lists, logprob rows) -> vLLM's ModelRunnerOutput
# (request ids, sampled tokens, logprob rows, prompt logprob rows by request) -> vLLM's ModelRunnerOutput
MakeOutput = Callable[[list[str], list[list[int]], list["p.LogprobRow | None"], dict[str, "p.PromptLogprobRows"]],
                      "ModelRunnerOutput"]


@dataclass(slots=True)
class RequestState:
    prompt_token_ids: list[int]
    route: list[str]
    sampling: bytes
    output_token_ids: list[int] = field(default_factory=list)
    introduced: bool = False  # the route's nodes know this request


@dataclass(slots=True)
class PendingBatch:
    step_id: int
    request_ids: list[str]  # in the scheduler's order
    deadline: float
    future: Future[ModelRunnerOutput] = field(default_factory=Future)
    tokens: dict[str, p.TokenOut] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # request id -> error
    times: dict[str, Any] | None = None  # tracing: submit, sent, recv (each Tokens), done

    @property
    def done(self) -> bool:
        return len(self.tokens) + len(self.failed) >= len(self.request_ids)


class BatchBook:
    """Requests' token state and the batches in flight (thread-safe: the receiver thread completes them)."""

    def __init__(self, make_output: MakeOutput, step_timeout_s: float):
        self.requests: dict[str, RequestState] = {}
        self.pending: dict[int, PendingBatch] = {}
        self.failed_requests: dict[str, str] = {}  # for the scheduler to finish with an error
        self._make_output = make_output
        self._timeout = step_timeout_s
        self._lock = threading.Lock()
        self._next_step = 0
        self.serving_s = 0.0  # time with at least one batch in flight: what node busy shares are out of
        self._serving_since = 0.0
        self.trace = tracer(COORDINATOR_PEER)  # VLLM_HELIX_TRACE: per-step timestamps (None: off)

    # ------------------------------------------------------------------ outgoing

    def build(self, scheduler_output: SchedulerOutput, routes: dict[str, list[str]],
              grammar_output: GrammarOutput | None = None) -> tuple[PendingBatch, dict[str, p.Step]]:
        """A pending batch and the Step to send to each first hop (with each structured-output request's grammar
        bitmask row, which the hops pass on to the last node)."""
        submitted, cpu = (time.time(), time.thread_time()) if self.trace is not None else (0.0, 0.0)
        masks = {}
        if grammar_output is not None:
            bitmask = grammar_output.grammar_bitmask
            masks = {rid: bitmask[i].tobytes() for i, rid in enumerate(grammar_output.structured_output_request_ids)}
        for new in scheduler_output.scheduled_new_reqs:
            self.requests[new.req_id] = RequestState(
                list(new.prompt_token_ids or []), routes[new.req_id], p.encode_sampling(new.sampling_params))
        computed = {new.req_id: new.num_computed_tokens for new in scheduler_output.scheduled_new_reqs}
        cached = scheduler_output.scheduled_cached_reqs
        computed.update(zip(cached.req_ids, cached.num_computed_tokens, strict=True))
        by_hop: dict[str, list[p.Item]] = {}
        with self._lock:
            step_id = self._next_step
            self._next_step += 1
            for rid, count in scheduler_output.num_scheduled_tokens.items():
                state = self.requests[rid]
                by_hop.setdefault(state.route[0], []).append(
                    self._item(rid, state, computed[rid], count, masks.get(rid, b"")))
            now = time.monotonic()
            batch = PendingBatch(step_id, list(scheduler_output.num_scheduled_tokens), now + self._timeout)
            if self.trace is not None:
                batch.times = {"step": step_id, "submit": submitted, "sent": 0.0, "recv": [], "done": 0.0,
                               "cpu": cpu, "requests": len(batch.request_ids)}
            if not self.pending:
                self._serving_since = now
            self.pending[step_id] = batch
        if not batch.request_ids:
            self._finish(batch)
        return batch, {hop: p.Step(step_id, items) for hop, items in by_hop.items()}

    def sent(self, batch: PendingBatch) -> None:
        """Every first hop's Step of `batch` is queued (tracing)."""
        if batch.times is not None:
            batch.times["sent"] = time.time()
            batch.times["cpu"] = time.thread_time() - batch.times["cpu"]  # building, encoding, sending

    def _item(self, rid: str, state: RequestState, start: int, count: int, grammar: bytes) -> p.Item:
        decode = start >= len(state.prompt_token_ids)
        new = None
        if not state.introduced:
            state.introduced = True
            new = p.NewRequest(state.prompt_token_ids, state.route, state.sampling)
        return p.Item(rid, start, count, state.output_token_ids[-1:] if decode else [], new, grammar)

    def forget(self, request_ids: set[str]) -> dict[str, list[str]]:
        """Drop finished requests; returns their routes (their nodes must free KV)."""
        with self._lock:
            gone = {rid: self.requests.pop(rid).route for rid in request_ids if rid in self.requests}
            for rid in request_ids:
                self.failed_requests.pop(rid, None)
        return gone

    # ------------------------------------------------------------------ incoming

    def on_tokens(self, message: p.Tokens) -> None:
        with self._lock:
            batch = self.pending.get(message.step_id)
            if batch is None:
                return
            if batch.times is not None:
                batch.times["recv"].append(time.time())
            for out in message.results:
                batch.tokens[out.request_id] = out
                state = self.requests.get(out.request_id)
                if state is not None and out.token_id is not None:
                    state.output_token_ids.append(out.token_id)
            complete = batch.done
        if complete:
            self._finish(batch)

    def on_failed(self, step_id: int, request_ids: list[str], error: str) -> None:
        with self._lock:
            batch = self.pending.get(step_id)
            for rid in request_ids:
                self.failed_requests[rid] = error
                if batch is not None:
                    batch.failed[rid] = error
            complete = batch is not None and batch.done
        if complete and batch is not None:
            self._finish(batch)

    def fail_requests(self, request_ids: list[str], error: str) -> None:
        """These requests cannot go on (their node is gone): fail them now and in any batch in flight."""
        doomed = set(request_ids)
        with self._lock:
            self.failed_requests.update(dict.fromkeys(doomed, error))
        for batch in list(self.pending.values()):
            lost = [rid for rid in batch.request_ids if rid in doomed and rid not in batch.tokens]
            if lost:
                self.on_failed(batch.step_id, lost, error)

    def expire(self) -> None:
        now = time.monotonic()
        for batch in list(self.pending.values()):
            if now > batch.deadline:
                missing = [r for r in batch.request_ids if r not in batch.tokens and r not in batch.failed]
                self.on_failed(batch.step_id, missing, f"no answer from the cluster within {self._timeout:.0f} s")

    def _finish(self, batch: PendingBatch) -> None:
        with self._lock:
            if self.pending.pop(batch.step_id, None) is not None and not self.pending:
                self.serving_s += time.monotonic() - self._serving_since
        outs = [batch.tokens.get(rid) for rid in batch.request_ids]
        sampled = [[o.token_id] if o is not None and o.token_id is not None else [] for o in outs]
        rows = [o.logprob_row if o is not None and o.token_id is not None else None for o in outs]
        prompt_rows = {o.request_id: o.prompt_logprobs for o in outs if o is not None and o.prompt_logprobs}
        batch.future.set_result(self._make_output(batch.request_ids, sampled, rows, prompt_rows))
        if batch.times is not None and self.trace is not None:
            batch.times["done"] = time.time()
            self.trace.record(batch.times)

    def take_failed(self) -> dict[str, str]:
        with self._lock:
            failed, self.failed_requests = self.failed_requests, {}
        return failed
