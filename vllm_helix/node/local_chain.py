"""An in-process chain of partial-layer workers with a small chunked-prefill scheduler.

It stands in for the coordinator and the transport in tests and demos: each step it packs decode
steps of running requests first, then prefill chunks (FCFS) up to ``max_num_batched_tokens``, as
vLLM's scheduler does, and passes the batch through the workers in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vllm_helix.errors import HelixError
from vllm_helix.node.partial_worker import PartialLayerWorker
from vllm_helix.node.types import HiddenBatch, StepItem, TokenResult


@dataclass(slots=True)
class Generation:
    """What one request produced: sampled token ids, their logprob rows, and why it stopped."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float] | None] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass(slots=True)
class _Running:
    rid: str
    prompt: list[int]
    out: Generation
    num_computed: int = 0

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < len(self.prompt)


class LocalChain:
    """Workers whose ranges tile ``[0, L)`` in order, driven step by step in this process."""

    def __init__(self, workers: Sequence[PartialLayerWorker]) -> None:
        _check_tiling(workers)
        self.workers = list(workers)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling_params: Any | Sequence[Any],
        *,
        max_num_batched_tokens: int = 64,
        max_num_seqs: int = 16,
    ) -> list[Generation]:
        """Generate for every prompt (token ids); results in prompt order."""
        params = (
            sampling_params if isinstance(sampling_params, list | tuple) else [sampling_params] * len(prompts)
        )
        waiting = [_Running(f"req-{i}", list(p), Generation()) for i, p in enumerate(prompts)]
        results = [r.out for r in waiting]
        by_id = {r.rid: (r, sp) for r, sp in zip(waiting, params, strict=True)}
        running: list[_Running] = []
        while waiting or running:
            batch = self._schedule(waiting, running, by_id, max_num_batched_tokens, max_num_seqs)
            for item, res in zip(batch, self.step(batch), strict=True):
                self._advance(by_id[item.request_id][0], item, res, running)
        return results

    def step(self, batch: list[StepItem]) -> list[TokenResult]:
        """Pass one batch through every worker; the last one's sampled tokens come back."""
        for worker in self.workers[:-1]:
            hidden: HiddenBatch = worker.execute(batch)  # type: ignore[assignment]
            batch = [
                StepItem(
                    i.request_id, i.start_position, i.num_tokens, i.new_token_ids, h.hidden_states, h.residual
                )
                for i, h in zip(batch, hidden, strict=True)
            ]
        return self.workers[-1].execute(batch)  # type: ignore[return-value]

    def _schedule(self, waiting, running, by_id, budget: int, max_seqs: int) -> list[StepItem]:
        batch: list[StepItem] = []
        for r in running:  # decodes and unfinished prefills of running requests, in order
            if budget == 0:
                break
            n = min(len(r.prompt) - r.num_computed, budget) if r.in_prefill else 1
            batch.append(StepItem(r.rid, r.num_computed, n, [] if r.in_prefill else r.out.token_ids[-1:]))
            budget -= n
        while waiting and budget > 0 and len(running) < max_seqs:
            r = waiting.pop(0)
            for w in self.workers:
                w.add_request(r.rid, r.prompt, by_id[r.rid][1])
            running.append(r)
            n = min(len(r.prompt), budget)
            batch.append(StepItem(r.rid, 0, n))
            budget -= n
        if not batch:
            raise HelixError("nothing could be scheduled (max_num_batched_tokens must be >= 1)")
        return batch

    def _advance(self, r: _Running, item: StepItem, res: TokenResult, running: list[_Running]) -> None:
        r.num_computed += item.num_tokens
        if res.token_id is None:
            return
        r.out.token_ids.append(res.token_id)
        r.out.logprobs.append(res.logprobs)
        if res.finished:
            r.out.finish_reason = res.finish_reason
            running.remove(r)
            for w in self.workers:
                w.free_request(r.rid)


def _check_tiling(workers: Sequence[PartialLayerWorker]) -> None:
    if not workers:
        raise HelixError("a chain needs at least one worker")
    edge = 0
    for w in workers:
        if w.start != edge:
            raise HelixError(
                f"worker ranges must tile the model in order: got [{w.start}, {w.end}) after {edge}"
            )
        edge = w.end
    if edge != workers[-1].num_layers_total:
        raise HelixError(f"the chain ends at layer {edge}, the model has {workers[-1].num_layers_total}")
