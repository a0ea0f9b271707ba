"""Translate vLLM scheduler batches into per-route steps, and node answers back into model outputs.

The coordinator runs no model: for every scheduled request it sends the first node of the request's
route what to compute (a prefill chunk — the node holds the prompt — or a decode step with the token
sampled last time), and waits for the last node's sampled token. A request that fails on a node is
answered with no token and reported to the scheduler, which finishes it with an error.

Failover: a request whose route lost a node is *dropped* — answered with no token in every batch in flight, and
any late token of it ignored — until the scheduler preempts it; when vLLM schedules it again (resumed from
preemption) it is recomputed on its new route from all its tokens, under a new id on the nodes (`rid#1`,
`rid#2`, ...), so whatever the nodes still hold or still send of the old one can never mix with it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
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
REROUTED = "rerouted"  # in PendingBatch.failed: no token for this request, and no error either
MakeOutput = Callable[[list[str], list[list[int]], list["p.LogprobRow | None"], dict[str, "p.PromptLogprobRows"]],
                      "ModelRunnerOutput"]


@dataclass(slots=True)
class RequestState:
    prompt_token_ids: list[int]
    route: list[str]
    sampling: bytes
    wire_id: str = ""  # the request's id on the nodes: its vLLM id, then rid#n after the n-th reroute
    output_token_ids: list[int] = field(default_factory=list)
    introduced: bool = False  # the route's nodes know this request
    dropped: bool = False  # its route lost a node: no more steps until it is recomputed elsewhere


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

    def __init__(self, make_output: MakeOutput, step_timeout_s: float, async_scheduling: bool = False):
        self.requests: dict[str, RequestState] = {}
        self.pending: dict[int, PendingBatch] = {}
        self.failed_requests: dict[str, str] = {}  # for the scheduler to finish with an error
        self.by_wire: dict[str, str] = {}  # the id on the nodes of each request's current incarnation -> vLLM's id
        self.reroutes: dict[str, int] = {}  # request id -> how often it was recomputed on another route
        self.retired: dict[str, list[str]] = {}  # old incarnations (id on the nodes -> route) the nodes must free
        self._make_output = make_output
        self._timeout = step_timeout_s
        self._async = async_scheduling  # decode steps may go out before their token is back (--helix-async)
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
        cached = scheduler_output.scheduled_cached_reqs
        by_hop: dict[str, list[p.Item]] = {}
        with self._lock:
            for new in scheduler_output.scheduled_new_reqs:  # (vLLM's v2 runner lists resumed requests here)
                self._incarnate(new.req_id, new.prefill_token_ids or new.prompt_token_ids or [], routes[new.req_id],
                                p.encode_sampling(new.sampling_params))
            for rid in cached.resumed_req_ids:
                self._incarnate(rid, cached.all_token_ids[rid], routes[rid], self.requests[rid].sampling)
            computed = {new.req_id: new.num_computed_tokens for new in scheduler_output.scheduled_new_reqs}
            computed.update(zip(cached.req_ids, cached.num_computed_tokens, strict=True))
            step_id = self._next_step
            self._next_step += 1
            now = time.monotonic()
            batch = PendingBatch(step_id, list(scheduler_output.num_scheduled_tokens), now + self._timeout)
            for rid, count in scheduler_output.num_scheduled_tokens.items():
                state = self.requests[rid]
                if state.dropped:  # its route lost a node since it was scheduled: the scheduler reroutes it
                    batch.failed[rid] = REROUTED
                    continue
                by_hop.setdefault(state.route[0], []).append(
                    self._item(state, computed[rid], count, masks.get(rid, b"")))
            if self.trace is not None:
                batch.times = {"step": step_id, "submit": submitted, "sent": 0.0, "recv": [], "done": 0.0,
                               "cpu": cpu, "requests": len(batch.request_ids)}
            if not self.pending:
                self._serving_since = now
            self.pending[step_id] = batch
        self._finish_done()  # this one (every request dropped) and any an older incarnation held up
        return batch, {hop: p.Step(step_id, items) for hop, items in by_hop.items()}

    def sent(self, batch: PendingBatch, queued: float) -> None:
        """Every first hop's Step of `batch` is queued, the first of them at `queued` (a time.time(); tracing)."""
        if batch.times is not None:
            batch.times["sent"] = queued
            batch.times["cpu"] = time.thread_time() - batch.times["cpu"]  # building, encoding, sending

    def _incarnate(self, rid: str, tokens: list[int], route: list[str], sampling: bytes) -> None:
        """A request (re)starts on `route` from these tokens: new, or recomputed after a preemption."""
        old = self.requests.get(rid)
        if old is not None:  # preempted: the nodes of its old route free what they hold of it
            self._retire(rid, old)
            self.reroutes[rid] = self.reroutes.get(rid, 0) + 1
        n = self.reroutes.get(rid, 0)
        wire_id = f"{rid}#{n}" if n else rid
        self.requests[rid] = RequestState(list(tokens), route, sampling, wire_id)
        self.by_wire[wire_id] = rid

    def _retire(self, rid: str, state: RequestState) -> None:
        """End an incarnation: its nodes free it, and batches in flight answer it with no token (its late tokens
        are ignored, so nothing else would; a batch left waiting on it would stall the engine until it expired,
        or for good once the request finished under its next incarnation)."""
        state.dropped = True
        if self.by_wire.pop(state.wire_id, None) is not None and state.introduced:
            self.retired[state.wire_id] = state.route
        for batch in self.pending.values():
            if rid in batch.request_ids and rid not in batch.tokens:
                batch.failed.setdefault(rid, REROUTED)

    def _item(self, state: RequestState, start: int, count: int, grammar: bytes) -> p.Item:
        decoded = start - len(state.prompt_token_ids)  # which output token a decode step feeds in
        # none while it is not back (async scheduling): the route's first node gets it from the last node
        tokens = state.output_token_ids[decoded:decoded + 1] if decoded >= 0 else []
        new = None
        if not state.introduced:
            state.introduced = True
            new = p.NewRequest(state.prompt_token_ids, state.route, state.sampling, sampled_to_first=self._async)
        return p.Item(state.wire_id, start, count, tokens, new, grammar)

    def forget(self, request_ids: set[str]) -> dict[str, list[str]]:
        """Drop finished requests; returns the routes by id on the nodes of what the nodes must free."""
        with self._lock:
            for rid in request_ids:
                state = self.requests.pop(rid, None)
                if state is not None:
                    self._retire(rid, state)
                self.failed_requests.pop(rid, None)
                self.reroutes.pop(rid, None)
        self._finish_done()
        return self.take_retired()

    def retire(self, request_ids: list[str]) -> dict[str, list[str]]:
        """These requests move to another route (the scheduler preempted them): what the nodes must free."""
        with self._lock:
            for rid in request_ids:
                state = self.requests.get(rid)
                if state is not None:
                    self._retire(rid, state)
        self._finish_done()
        return self.take_retired()

    def holds(self, node: str) -> bool:
        """Some request the nodes still hold (not moved off its route yet) is routed through `node`."""
        with self._lock:
            return any(node in self.requests[rid].route for rid in self.by_wire.values())

    def take_retired(self) -> dict[str, list[str]]:
        with self._lock:
            retired, self.retired = self.retired, {}
        return retired

    # ------------------------------------------------------------------ incoming

    def on_tokens(self, message: p.Tokens) -> None:
        with self._lock:
            batch = self.pending.get(message.step_id)
            if batch is None:
                return
            if batch.times is not None:
                batch.times["recv"].append(time.time())
            for out in message.results:
                rid = self.by_wire.get(out.request_id)
                if rid is None or rid in batch.failed:  # an old incarnation's, or dropped from this batch: late
                    continue
                batch.tokens[rid] = out
                if out.token_id is not None:
                    self.requests[rid].output_token_ids.append(out.token_id)
            complete = batch.done
        if complete:
            self._finish(batch)

    def on_failed(self, step_id: int, wire_ids: list[str], error: str) -> list[str]:
        """A node failed these requests: they fail, unless their route lost a node (then they are rerouted).
        Returns the failed ones."""
        with self._lock:
            batch = self.pending.get(step_id)
            failed = []
            for wire_id in wire_ids:
                rid = self.by_wire.get(wire_id)
                if rid is None or self.requests[rid].dropped:
                    continue
                failed.append(rid)
                self.failed_requests[rid] = error
                if batch is not None:
                    batch.failed[rid] = error
            complete = batch is not None and batch.done
        if complete and batch is not None:
            self._finish(batch)
        return failed

    def drop(self, through: str | None = None, request_ids: Collection[str] = ()) -> list[str]:
        """Drop the requests routed through node `through` (and these): no more steps for them, no token in any
        batch in flight (late ones are ignored), until the scheduler moves them to another route. Returns them."""
        with self._lock:
            wanted = set(request_ids)
            dropped = [rid for rid, state in self.requests.items()
                       if not state.dropped and (rid in wanted or (through is not None and through in state.route))]
            for rid in dropped:
                self.requests[rid].dropped = True
            for batch in self.pending.values():
                for rid in batch.request_ids:
                    if rid in self.requests and self.requests[rid].dropped and rid not in batch.tokens:
                        batch.failed.setdefault(rid, REROUTED)
        self._finish_done()
        return dropped

    def expire(self) -> list[str]:
        """Requests of batches past the step timeout: dropped (the scheduler reroutes them)."""
        now = time.monotonic()
        late = [rid for batch in list(self.pending.values()) if now > batch.deadline
                for rid in batch.request_ids if rid not in batch.tokens and rid not in batch.failed]
        return self.drop(request_ids=late) if late else []

    def _finish_done(self) -> None:
        with self._lock:
            done = [batch for batch in self.pending.values() if batch.done]
        for batch in done:
            self._finish(batch)

    def _finish(self, batch: PendingBatch) -> None:
        with self._lock:
            if self.pending.pop(batch.step_id, None) is None:
                return  # finished already
            if not self.pending:
                self.serving_s += time.monotonic() - self._serving_since
        outs = [batch.tokens.get(rid) for rid in batch.request_ids]
        sampled = [[o.token_id] if o is not None and o.token_id is not None else [] for o in outs]
        rows = [o.logprob_row if o is not None and o.token_id is not None else None for o in outs]
        prompt_rows = {rid: o.prompt_logprobs for rid, o in zip(batch.request_ids, outs, strict=True)
                       if o is not None and o.prompt_logprobs}
        batch.future.set_result(self._make_output(batch.request_ids, sampled, rows, prompt_rows))
        if batch.times is not None and self.trace is not None:
            batch.times["done"] = time.time()
            self.trace.record(batch.times)

    def take_failed(self) -> dict[str, str]:
        with self._lock:
            failed, self.failed_requests = self.failed_requests, {}
        return failed
