"""Time the real partial-layer worker: prefill chunks and decode steps for several layer counts.

Each layer count k runs one `PartialLayerWorker` on layers [0, k) — the first range, so batches need no
hidden states from a previous node — with vLLM's own model runner, as a serving node does (torch.compile
unless enforce_eager). What the last range adds to a batch (final norm, LM head, sampling) is timed apart,
as the last layer less the one before it (`measure_sampling`). A point's time is the median of
`sweep.repeats` runs after one untimed run of the same shape (the first batch of a shape pays for kernel
selection and first-touch memory).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vllm_helix.node.config import WorkerConfig
from vllm_helix.node.types import StepItem
from vllm_helix.profiling.sweep import Sweep


@dataclass
class Timings:
    """Seconds per batch, keyed by layer count and batch shape."""

    prompt: dict[tuple[int, int], float] = field(default_factory=dict)  # (k, prompt tokens)
    decode: dict[tuple[int, int, int], float] = field(default_factory=dict)  # (k, context, sequences)
    sampling: dict[int, float] = field(default_factory=dict)  # sequences -> what the last range adds per batch


@dataclass(frozen=True, slots=True)
class Memory:
    """What sizes the KV cache at the chosen fraction, as a serving node sizes it."""

    available_bytes: int  # free device memory before any weights are loaded
    layer_weight_bytes: float  # one transformer layer's weights
    kv_bytes_per_token_layer: float  # K+V of one token in one layer, at the dtype the worker runs


def measure(model_path: str, layer_counts: list[int], sweep: Sweep, config: WorkerConfig,
            tick: Callable[[str], None]) -> tuple[Timings, Memory]:
    """Time every point of `sweep` for each k in `layer_counts`; `tick(label)` after each point."""
    from vllm_helix.node.partial_worker import PartialLayerWorker, _available_memory

    available = _available_memory()
    timings, memory = Timings(), None
    for k in layer_counts:
        worker = PartialLayerWorker(model_path, (0, k), config)
        try:
            worker.warm_up()
            if memory is None:
                stats = worker.kv_stats()
                memory = Memory(available, worker.layer_weight_bytes() / k,
                                stats.bytes_per_block / (stats.block_size * stats.num_layers))
            _time_prompts(worker, k, sweep, timings, tick)
            _time_decodes(worker, k, sweep, timings, tick)
        finally:
            del worker
    assert memory is not None  # layer_counts is never empty
    return timings, memory


def measure_sampling(model_path: str, total: int, sweep: Sweep, config: WorkerConfig, timings: Timings,
                     tick: Callable[[str], None]) -> None:
    """What the last range adds to a decode batch (final norm, LM head, sampling), per batch size: a decode
    step of the last layer less one of the layer before it, both fed hidden states, at the shortest context."""
    from vllm_helix.node.partial_worker import PartialLayerWorker

    if total < 2:
        return  # the only range is the first and the last: the sweep's own k = 1 has no layer to compare
    steps = {}
    for layers in ((total - 2, total - 1), (total - 1, total)):
        worker = PartialLayerWorker(model_path, layers, config)
        try:
            worker.warm_up()
            steps[layers] = Timings()
            _time_decodes(worker, 1, sweep, steps[layers], tick, contexts=sweep.contexts[:1])
        finally:
            del worker
    before, last = steps[(total - 2, total - 1)].decode, steps[(total - 1, total)].decode
    timings.sampling.update({d: last[(k, c, d)] - before[(k, c, d)] for k, c, d in last})  # floored when written


def _tokens(n: int, offset: int = 0) -> list[int]:
    return [3 + (offset + i) * 7 % 97 for i in range(n)]  # ids every vocabulary has (the tiny one has 466)


def _timed(run: Callable[[], object], repeats: int) -> float:
    run()  # untimed: the first batch of a shape
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _item(worker, rid: str, start: int, n: int, token: list[int] | None = None) -> StepItem:
    """A batch item; a range after the first gets hidden states and residual rows, as from the node before."""
    import torch

    rows = None if worker.is_first else torch.zeros(n, worker.hidden_size, dtype=worker.vllm_config.model_config.dtype)
    return StepItem(rid, start, n, token or [], rows, rows)


def _time_prompts(worker, k: int, sweep: Sweep, timings: Timings, tick: Callable[[str], None]) -> None:
    serial = iter(range(1 << 30))

    def prefill(n: int) -> None:
        rid = f"profile-prompt-{next(serial)}"
        worker.add_request(rid, _tokens(n))
        try:
            worker.execute([_item(worker, rid, 0, n)])
        finally:
            worker.free_request(rid)

    for n in sweep.prompt_tokens:
        timings.prompt[(k, n)] = _timed(functools.partial(prefill, n), sweep.repeats)
        tick(f"k={k} prefill {n}")


def _decode(worker, rids: list[str], position: dict[str, int]) -> None:
    """One decode step of these sequences (the first range embeds the token it is given)."""
    worker.execute([_item(worker, rid, position[rid], 1, [5]) for rid in rids])
    for rid in rids:
        position[rid] += 1


def _time_decodes(worker, k: int, sweep: Sweep, timings: Timings, tick: Callable[[str], None],
                  contexts: tuple[int, ...] | None = None) -> None:
    budget = worker.config.max_num_batched_tokens
    most = max(sweep.decode_seqs)
    for context in sweep.contexts if contexts is None else contexts:
        rids = [f"profile-decode-{context}-{i}" for i in range(most)]
        position = dict.fromkeys(rids, 0)
        for i, rid in enumerate(rids):
            worker.add_request(rid, _tokens(context, i))
        try:
            for rid in rids:  # prefill every sequence to `context` tokens, in chunks the worker accepts
                while position[rid] < context:
                    n = min(budget, context - position[rid])
                    worker.execute([_item(worker, rid, position[rid], n)])
                    position[rid] += n

            for d in sweep.decode_seqs:
                run = functools.partial(_decode, worker, rids[:d], position)
                timings.decode[(k, context, d)] = _timed(run, sweep.repeats)
                tick(f"k={k} decode {d} x {context}")
        finally:
            for rid in rids:
                worker.free_request(rid)
