"""A compute node: FIFO batching, one layer at a time, per-layer latency from the GPU profile (§6.3).

Requests wait in a queue per *entry layer* (the node's first layer, plus any layer where a
partial-inference route enters). A batch picked at entry layer e runs every layer up to the next entry
layer (or the node's end) without interruption — that is what the reference's cyclic layer pointer does,
because no other request can join in between — so one event covers the whole segment.

With batches in flight (the Helix coordinator's steps, see sim/batching.py), a node runs one step at a time, as
a real node runs one Step message: the iterations of the step at the head of its queue, whatever the caps.
A node on a shared host (sim/cpu.py) runs its batch on cores it shares with the host's other nodes.

Layer time = f_prompt(prompt tokens) + f_decode(decode sequences) (a measured profile's f_decode at the decodes'
mean context, between the contexts it timed); with `reference_compat`, f_decode is
doubled when exactly one decode is batched and the first layer pays the CPU copy overhead of every token
received since the previous first-layer batch (tokens x activation x (1/4e9 + 1/5e9) s).
"""

from __future__ import annotations

from collections.abc import Callable

from vllm_helix.planner.placement import LayerRange
from vllm_helix.planner.profiles import GPUProfile
from vllm_helix.planner.router import MAX_PROMPT_TOKENS_PER_REQUEST
from vllm_helix.sim.cpu import SharedCpu
from vllm_helix.sim.kv import KVCache
from vllm_helix.sim.loop import EventLoop

DECODE_CONTEXT_PER_TOKEN = 1000  # reference decode_max_context = decode_max_tokens * 1000
CPU_OVERHEAD_S_PER_BYTE = 1 / 4e9 + 1 / 5e9  # "concat" at 4 GB/s + "transfer" at 5 GB/s


class Iteration:
    """One iteration of a query: its prompt (tokens = P) or one decode step (tokens = 1)."""

    __slots__ = ("query", "prompt", "tokens", "context", "issued", "hop", "sent_at", "step")

    def __init__(self, query, prompt: bool, tokens: int, context: int, issued: float, step=None):
        self.query = query
        self.prompt = prompt
        self.tokens = tokens
        self.context = context  # tokens already in the KV cache (prev_num_tokens)
        self.issued = issued
        self.hop = 0  # index into query.path of the link it is on / the node it is at
        self.sent_at = issued
        self.step = step  # the coordinator's batch it belongs to (None: nodes batch what is queued)


class ComputeNode:
    def __init__(self, name: str, layers: LayerRange, profile: GPUProfile, kv_capacity: int, loop: EventLoop,
                 entry_layers: set[int], *, activation_bytes: int, reference_compat: bool,
                 cpu: SharedCpu | None = None, cpu_quota: float | None = None, samples: bool = False):
        k = layers.size
        self.name, self.start, self.end = name, layers.start, layers.end
        self.profile, self.loop = profile, loop
        self.kv = KVCache(kv_capacity)
        self.entries = sorted(entry_layers | {layers.start})
        self.queues: dict[int, list[Iteration]] = {e: [] for e in self.entries}
        self.prompt_max_requests = profile.prompt_max_requests[k]
        self.prompt_max_tokens = self.prompt_max_requests * MAX_PROMPT_TOKENS_PER_REQUEST
        self.decode_max_tokens = profile.decode_max_tokens[k]
        self.decode_max_context = self.decode_max_tokens * DECODE_CONTEXT_PER_TOKEN
        self.fp = profile.prompt_latency
        self.compat = reference_compat
        self.overhead_per_token = activation_bytes * CPU_OVERHEAD_S_PER_BYTE if reference_compat else 0.0
        self.cpu_tokens = 0
        self.pos = layers.end - 1  # last layer run
        self.batch: tuple[list[Iteration], int, int] | None = None
        self.wake_pending = False
        self.busy_s = 0.0
        self.batches = 0
        self.forward: Callable[[Iteration], None] = lambda it: None  # set by the coordinator
        self.on_hop_time: Callable[[str, float], None] | None = None
        self.cpu, self.cpu_quota = cpu, cpu_quota  # None: its own device, at its profile's speed
        self.samples = samples  # the last range: its batches end with the LM head and sampling

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def arrive(self, it: Iteration) -> None:
        step = it.query.path[it.hop]
        self.queues[step.entry].append(it)
        self.cpu_tokens += it.tokens
        if self.batch is None and not self.wake_pending:
            self._wake()

    def _wake(self) -> None:
        """Pick the next batch after the other events of this instant (the reference's StartExecution event),
        so requests arriving at the same time join it."""
        self.wake_pending = True
        self.loop.at(self.loop.now, self._start)

    def _next_entry(self) -> int | None:
        entries = self.entries
        if len(entries) == 1:
            return entries[0] if self.queues[entries[0]] else None
        after = [e for e in entries if e > self.pos] + [e for e in entries if e <= self.pos]
        return next((e for e in after if self.queues[e]), None)

    def _start(self, _=None) -> None:
        self.wake_pending = False
        if self.batch is not None:
            return
        entry = self._next_entry()
        if entry is None:
            return
        batch, rest, prompt_tokens, decodes = self._select(self.queues[entry])
        if not batch:
            return
        self.queues[entry] = rest
        seg_end = next((e for e in self.entries if e > entry), self.end)
        context = None  # measured profiles time decodes per context: the batch's mean
        if decodes and self.profile.decode_by_context:
            context = sum(it.context for it in batch if not it.prompt) / decodes
        decode_s = self.profile.decode_seconds(decodes, context) if decodes else 0.0
        if decodes == 1 and self.compat:
            decode_s *= 2
        layer_s = (self.fp(prompt_tokens) if prompt_tokens else 0.0) + decode_s
        now = self.loop.now
        end = now + layer_s + self.profile.step_overhead_s  # measured profiles: input preparation
        if self.samples and seg_end == self.end:
            end += self.profile.sampling_seconds(len(batch))  # measured profiles
        if entry == self.start:
            end += self.cpu_tokens * self.overhead_per_token
            self.cpu_tokens = 0
        for _ in range(seg_end - entry - 1):
            end += layer_s  # summed per layer like the reference's per-layer events
        self.batches += 1
        self.batch = (batch, entry, seg_end)
        if self.cpu is None:
            self.busy_s += end - now
            self.loop.at(end, self._finish)
        else:
            self.cpu.run(self, end - now, self._finish_shared, self.cpu_quota)

    def _select(self, queue: list[Iteration]) -> tuple[list[Iteration], list[Iteration], int, int]:
        """FIFO under the batch caps; requests that do not fit stay queued (no head-of-line block). With steps,
        the head's step, whole."""
        if queue[0].step is not None:
            step = queue[0].step
            batch = [it for it in queue if it.step is step]
            if len(batch) < step.size:  # the rest of the step is still on the link: one message, one batch
                return [], queue, 0, 0
            prompts = [it.tokens for it in batch if it.prompt]
            return batch, [it for it in queue if it.step is not step], sum(prompts), len(batch) - len(prompts)
        batch, rest = [], []
        n_prompts = prompt_tokens = decodes = context = 0
        for it in queue:
            if it.prompt:
                if n_prompts < self.prompt_max_requests and prompt_tokens + it.tokens <= self.prompt_max_tokens:
                    batch.append(it)
                    n_prompts += 1
                    prompt_tokens += it.tokens
                    continue
            elif decodes < self.decode_max_tokens and context + it.context <= self.decode_max_context:
                batch.append(it)
                decodes += 1
                context += it.context
                continue
            rest.append(it)
        return batch, rest, prompt_tokens, decodes

    def _finish_shared(self, wall_s: float) -> None:
        self.busy_s += wall_s
        self._finish()

    def _finish(self, _=None) -> None:
        assert self.batch is not None  # scheduled only while a batch runs
        batch, entry, seg_end = self.batch
        layers = seg_end - entry
        kv = self.kv
        for it in batch:
            kv.add(it.query.id, it.tokens * layers)
        if seg_end == self.end:
            now, report = self.loop.now, self.on_hop_time
            for it in batch:
                if report is not None:
                    report(it.query.path[it.hop].src, now - it.sent_at)
                self.forward(it)
        else:
            self.queues[seg_end].extend(batch)
        self.pos = seg_end - 1
        self.batch = None
        if not self.wake_pending:
            self._wake()
