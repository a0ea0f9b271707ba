"""Plain per-step batch and result types of the partial-layer worker (dataclasses of tensors and lists,
so a transport can serialize them field by field)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from vllm_helix.wire import PromptLogprobRows


@dataclass(slots=True)
class StepItem:
    """One request's share of a batch on one node.

    ``start_position`` is the position of the first token of this step, which must equal the number of
    the request's tokens already in this node's KV cache. A prefill chunk covers prompt positions
    ``[start_position, start_position + num_tokens)``; a decode step has ``num_tokens == 1`` and carries
    the token sampled by the last node in ``new_token_ids`` (the first node embeds it).
    ``hidden_states`` / ``residual`` ([num_tokens, hidden_size]) come from the previous node; the first
    node gets None, and ``residual`` is None when ``hidden_states`` is their sum (the float32 stream).
    ``grammar_bitmask`` (int32, one bit per vocabulary token) is the scheduler's structured-output mask for the
    token this step samples; the last node applies it to the logits before sampling.
    """

    request_id: str
    start_position: int
    num_tokens: int
    new_token_ids: list[int] = field(default_factory=list)
    hidden_states: torch.Tensor | None = None
    residual: torch.Tensor | None = None
    grammar_bitmask: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class StreamBlock:
    """Rows of the residual stream as one step brought them to a node: its requests' rows in its order, as one
    block. When the runner's batch has the same requests in the same order (the usual decode step: requests keep
    their order from hop to hop), its input is one copy of the whole block (``rows_in_order``), with no view per
    request: each would cost a torch call, ~2-3 us, several times that on the caches a forward has just emptied.
    ``residual`` None: ``hidden_states`` is the summed float32 stream (see partial_worker)."""

    request_ids: list[str]
    counts: list[int]  # each request's rows
    hidden_states: torch.Tensor
    residual: torch.Tensor | None = None

    @staticmethod
    def of(item: StepItem) -> StreamBlock:
        """The block of one request's rows carried by its StepItem (local chains, start-up batches, tests)."""
        assert item.hidden_states is not None
        return StreamBlock([item.request_id], [item.num_tokens], item.hidden_states, item.residual)


def rows_in_order(blocks: Sequence[StreamBlock], order: Sequence[str], device: torch.device) -> list[torch.Tensor]:
    """The stream (and residual, if any) of the requests in ``order``, all of their rows, as new tensors on
    ``device``: vLLM's layers add and normalize in place, which must not write into the received buffers (or a
    caller's tensors). One copy of a block as it is when it holds exactly those requests in that order, else one
    gathered from the blocks."""
    if len(blocks) == 1 and blocks[0].request_ids == list(order):
        block = blocks[0]
        whole = [block.hidden_states] if block.residual is None else [block.hidden_states, block.residual]
        return [t.to(device, copy=True) for t in whole]
    where: dict[str, tuple[StreamBlock, int, int]] = {}
    for block in blocks:
        lo = 0
        for rid, n in zip(block.request_ids, block.counts, strict=True):
            where[rid] = (block, lo, n)
            lo += n
    pieces = [where[rid] for rid in order]
    stream = [torch.cat([b.hidden_states.narrow(0, lo, n) for b, lo, n in pieces]).to(device)]
    if blocks[0].residual is not None:
        stream.append(torch.cat([b.residual.narrow(0, lo, n) for b, lo, n in pieces]).to(device))  # type: ignore[union-attr]
    return stream


@dataclass(slots=True)
class HiddenResult:
    """Output of a non-last node for one request: the residual stream, split as vLLM's PP stages do, or summed
    into ``hidden_states`` with ``residual`` None (float32, where that is exact: see partial_worker)."""

    request_id: str
    hidden_states: torch.Tensor
    residual: torch.Tensor | None


@dataclass(frozen=True, slots=True)
class HiddenBatch(Sequence[HiddenResult]):
    """Output of a non-last node for a whole batch: the residual stream as one block of rows in the runner's order
    (``rows``: request id -> [lo, hi), in that order), as it goes to the next hop without a copy when the batch
    goes on as a whole. As a sequence, a ``HiddenResult`` (views of the block) per request in the batch's order."""

    hidden_states: torch.Tensor
    residual: torch.Tensor | None
    rows: dict[str, tuple[int, int]]
    request_ids: list[str]  # the batch's order

    def __len__(self) -> int:
        return len(self.request_ids)

    def __getitem__(self, i: int) -> HiddenResult:  # type: ignore[override]  # no slices
        rid = self.request_ids[i]
        lo, hi = self.rows[rid]
        return HiddenResult(rid, self.hidden_states[lo:hi], None if self.residual is None else self.residual[lo:hi])

    def blocks(self, request_ids: Sequence[str]) -> list[torch.Tensor]:
        """The rows of these requests (given in runner order) as host tensors: the stream, then the residual if
        any; views of the block when they are all of it, else one copy."""
        tensors = [self.hidden_states] if self.residual is None else [self.hidden_states, self.residual]
        if len(request_ids) != len(self.rows):
            index = torch.cat([torch.arange(*self.rows[rid]) for rid in request_ids]).to(self.hidden_states.device)
            tensors = [t.index_select(0, index) for t in tensors]
        return [t if t.is_cpu else t.cpu() for t in tensors]  # (a torch call even on the host: ~5 us after a forward)


@dataclass(slots=True)
class TokenResult:
    """Output of the last node for one request. ``token_id`` is None for a prefill chunk that does not
    end the prompt (nothing is sampled yet)."""

    request_id: str
    token_id: int | None
    logprobs: dict[int, float] | None = None  # token id -> logprob: the sampled one + top-k asked for
    finished: bool = False
    finish_reason: str | None = None  # "stop" (eos or a stop token) or "length"
    # vLLM's row as sampled: ids and logprobs of [sampled, top-1, ..., top-k], and the sampled token's rank
    logprob_row: tuple[list[int], list[float], int] | None = None
    # prompt_logprobs requests, on the step that ends the prompt: rows for prompt positions 1.. of
    # ids [prompt token, top-1, ..., top-k], their logprobs, and the prompt token's rank
    prompt_logprobs: PromptLogprobRows | None = None


@dataclass(frozen=True, slots=True)
class KVStats:
    """A node's paged KV cache: capacity and use, in blocks and tokens."""

    block_size: int
    total_blocks: int
    used_blocks: int
    num_layers: int
    bytes_per_block: int

    @property
    def free_blocks(self) -> int:
        return self.total_blocks - self.used_blocks

    @property
    def total_tokens(self) -> int:
        return self.total_blocks * self.block_size
