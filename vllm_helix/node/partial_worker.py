"""The partial-layer worker: one node's vLLM model runner for layers [start, end) and its own KV cache.

Why this shape: the worker drives vLLM's own platform worker and model runner (``CPUWorker`` /
``CPUModelRunner`` here, the CUDA ``Worker`` / ``GPUModelRunner`` on GPUs) in-process, and feeds it the
``SchedulerOutput`` a vLLM scheduler would have produced for a pipeline stage. Input preparation,
attention metadata, paged attention, the sampler (temperature, top-p/top-k, seeds, logprobs,
penalties) and chunked prefill are all vLLM's code; the worker only adds what a Helix node owns:
its layer range (``seam.LayerRange``), its KV block table (``kv_blocks``), per-request state across
batches that mix requests from different previous hops, and stop checks on the last range. Running a
whole ``EngineCore`` per node was the alternative; it owns a scheduler that would fight the router's
per-node admission, and it costs a process and 20-80 s per start on CPU, while this starts in seconds.

The residual stream crosses node boundaries as one tensor, ``hidden_states + residual``, in float32: the
next range's first add-norm computes that sum anyway, and gets the same bits from (sum, zeros), at half the
bytes of the pair. In 16-bit dtypes it crosses as the pair (``hidden_states``, ``residual``), exactly as vLLM's
own pipeline stages exchange it, because there the add-norm normalizes the unrounded sum. Either way a chain
is bit-identical to the whole model.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from vllm_helix import host, seams
from vllm_helix.errors import EngineStartError, NodeError
from vllm_helix.node import seam
from vllm_helix.node.config import WorkerConfig
from vllm_helix.node.kv_blocks import BlockAllocator, blocks_for
from vllm_helix.node.ranks import LocalRank, RankProcesses
from vllm_helix.node.types import HiddenBatch, KVStats, StepItem, StreamBlock, TokenResult
from vllm_helix.wire import Calibration, LogprobRow, PromptLogprobRows

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig
    from vllm.sequence import IntermediateTensors
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.outputs import LogprobsLists, LogprobsTensors, ModelRunnerOutput

logger = logging.getLogger(__name__)
# the start-up probe (calibrate): shapes every node runs alike, small enough to take a second or two on a CPU
PROBE_PREFILL_TOKENS = 128
PROBE_DECODE_SEQS = 8
PROBE_CONTEXT = 16


@dataclass(slots=True)
class _Request:
    prompt_token_ids: list[int]
    params: SamplingParams  # the greedy default on all but the last range
    num_computed: int = 0  # tokens whose KV lives in this node's cache
    output_token_ids: list[int] = field(default_factory=list)  # known sampled tokens
    sent_to_runner: bool = False


class PartialLayerWorker:
    """A vLLM model runner holding layers ``[start, end)`` of ``model_path``, with its own KV cache.

    ``config`` holds its settings (defaults: ``WorkerConfig()``); ``config.kv_cache_bytes`` sizes the KV
    cache, or else ``config.kv_fraction`` of the memory available. Raises EngineStartError for a range
    outside the model, a model vLLM cannot load, or a KV cache that does not fit in memory or cannot
    hold one ``max_model_len`` sequence.
    """

    def __init__(
        self,
        model_path: str,
        layer_range: tuple[int, int],
        config: WorkerConfig | None = None,
        *,
        num_layers_total: int | None = None,
    ) -> None:
        seams.check_vllm_version()
        self.model_path = str(model_path)
        self.config = config = config or WorkerConfig()
        budget = config.kv_cache_bytes if config.kv_cache_bytes is not None else _memory_budget(config.kv_fraction)
        _check_fits_in_memory(budget)
        self.tensor_parallel_size = _check_tensor_parallel(config.tensor_parallel_size or 1)  # before vLLM's checks
        self.vllm_config = _load_config(self.model_path, config, budget, layer_range)
        total = seam.num_hidden_layers(self.vllm_config)
        self.start, self.end = _check_range(layer_range, total, num_layers_total)
        self.num_layers_total = total
        self.is_first, self.is_last = self.start == 0, self.end == total
        self._ranks = _load_ranks(self.vllm_config, (self.start, self.end, total), self.tensor_parallel_size,
                                  self.model_path)
        self._init_kv_cache(budget)
        self._eos = seam.eos_token_ids(self.vllm_config)
        self._greedy = seam.sampling_params(temperature=0.0, max_tokens=1)
        self._requests: dict[str, _Request] = {}
        self._finished: set[str] = set()
        self.model_span, self.model_cpu = (0.0, 0.0), 0.0  # the last execute's forward (see execute)
        self._on_gpu = torch.cuda.is_available()

    # ------------------------------------------------------------ set-up

    def _init_kv_cache(self, budget: int) -> None:
        spec = self._ranks.kv_cache_spec()  # one rank's: with TP each rank holds its share of the KV heads
        self._bytes_per_block = seam.page_size_bytes(spec)
        self._block_size = seam.block_size(self.vllm_config)
        max_len = self.vllm_config.model_config.max_model_len
        need = (blocks_for(max_len, self._block_size) + 1) * self._bytes_per_block
        if budget < need:
            raise EngineStartError(
                f"KV cache of {budget / 2**20:.1f} MiB cannot hold one {max_len}-token sequence on "
                f"layers [{self.start}, {self.end}) ({need / 2**20:.1f} MiB needed); give the worker "
                "more kv_cache_bytes / kv_fraction or lower max_model_len"
            )
        config = self._ranks.init_kv_cache(spec, budget)
        self._num_local_attn_layers = len(spec)
        self._blocks = BlockAllocator(config.num_blocks, self._block_size)

    # ------------------------------------------------------------ public API

    @property
    def hidden_size(self) -> int:
        return seam.hidden_size(self.vllm_config)

    @property
    def dtype(self) -> str:
        """Weights/activations dtype, e.g. 'bfloat16' (every node of a cluster must agree)."""
        return str(self.vllm_config.model_config.dtype).removeprefix("torch.")

    @property
    def sends_summed_stream(self) -> bool:
        """Whether this range sends the residual stream as one summed tensor (float32) or as the pair."""
        return self.vllm_config.model_config.dtype == torch.float32

    def weight_bytes(self) -> int:
        """Bytes of the checkpoint tensors this worker loaded (embeddings, its layers, norm/LM head)."""
        return sum(self._ranks.loaded_weight_bytes().values())

    def layer_weight_bytes(self) -> int:
        """Bytes of the transformer-layer tensors only (``*.layers.N.*``)."""
        return sum(b for n, b in self._ranks.loaded_weight_bytes().items() if ".layers." in n)

    def kv_stats(self) -> KVStats:
        return KVStats(
            block_size=self._block_size,
            total_blocks=self._blocks.total,
            used_blocks=self._blocks.used,
            num_layers=self._num_local_attn_layers,
            bytes_per_block=self._bytes_per_block,
        )

    def kv_capacity(self) -> int:
        """Tokens this node's KV cache can hold in total."""
        return self.kv_stats().total_tokens

    def kv_usage(self) -> int:
        """Tokens' worth of KV blocks currently allocated."""
        return self._blocks.used * self._block_size

    def can_admit(self, num_tokens: int) -> bool:
        """Whether ``num_tokens`` more tokens of a new request fit in the free KV blocks now."""
        return blocks_for(num_tokens, self._block_size) <= self._blocks.total - self._blocks.used

    def blocks_short(self, batch: Sequence[StepItem]) -> int:
        """KV blocks ``batch`` needs beyond the free ones (0: it fits). Requests not on this node count none:
        ``execute`` refuses them."""
        free = self._blocks.total - self._blocks.used
        if sum(item.num_tokens for item in batch) // self._block_size + len(batch) <= free:
            return 0  # no item needs more than num_tokens // block_size + 1 new blocks: no need to look closer
        need = 0
        for item in batch:
            state = self._requests.get(item.request_id)
            if state is not None:
                need += self._blocks.missing(item.request_id, state.num_computed + item.num_tokens)
        return max(0, need - free)

    def add_request(
        self, request_id: str, prompt_token_ids: Sequence[int], sampling_params: SamplingParams | None = None
    ) -> None:
        """Register a request routed through this node (KV blocks are allocated as its steps run).

        ``sampling_params`` (a ``vllm.SamplingParams``) matters on the last range only.
        """
        if request_id in self._requests:
            raise NodeError(f"request {request_id!r} is already on this node")
        if not prompt_token_ids:
            raise NodeError(f"request {request_id!r} has an empty prompt")
        params = sampling_params if (self.is_last and sampling_params is not None) else self._greedy
        self._requests[request_id] = _Request(list(prompt_token_ids), params)

    def warm_up(self, on_phase: Callable[[str], None] = lambda phase: None) -> None:
        """Run one full-size prefill and a decode step of a throw-away request, as vLLM's own workers do at
        start-up: the first batch of a shape pays for kernel selection and first-touch memory (~25 % of a
        512-token prefill on CPU), which would otherwise land on the first user's request. The first batch
        also runs torch.compile (unless enforce_eager); ``on_phase`` hears "compiling" and "warming up"."""
        config = self.vllm_config
        # the prefill and the decode step each sample a token on the last range: n + 2 <= max_model_len
        tokens = min(config.scheduler_config.max_num_batched_tokens, config.model_config.max_model_len - 2,
                     self.kv_capacity() - 1)
        if tokens < 1:
            return
        compiled = not config.model_config.enforce_eager
        with self._throw_away(["helix-warm-up"], tokens) as (rid,):
            try:
                on_phase("compiling" if compiled else "warming up")
                self.execute([self._filler(rid, 0, tokens)])
                if compiled:
                    on_phase("warming up")
                self.execute([self._filler(rid, tokens, 1)])
            except Exception as err:
                raise EngineStartError(f"layers [{self.start}, {self.end}) failed their warm-up batch: {err}") from err

    def calibrate(self) -> Calibration | None:
        """Time the start-up probe (after ``warm_up``): a prefill chunk and a decode step of the same shapes on
        every node, the best of two runs each. The coordinator compares them with what the plan says those
        batches cost (coordinator/drift.py): each node's real speed, before the first request. None when the
        KV cache or the batch limits cannot hold the probe."""
        config = self.vllm_config
        budget, max_len = config.scheduler_config.max_num_batched_tokens, config.model_config.max_model_len
        tokens = min(PROBE_PREFILL_TOKENS, budget, max_len - 2, self.kv_capacity() - 1)
        context = min(PROBE_CONTEXT, tokens)
        free_blocks = self._blocks.total - self._blocks.used
        seqs = min(PROBE_DECODE_SEQS, config.scheduler_config.max_num_seqs, budget // max(context, 1),
                   free_blocks // blocks_for(context + 2, self._block_size))
        if tokens < 1 or seqs < 1:
            return None

        def seconds(batch: list[StepItem]) -> float:
            started = time.monotonic()
            self.execute(batch)
            return time.monotonic() - started

        prefill = []
        try:
            for run in range(2):
                with self._throw_away([f"helix-probe-prefill-{run}"], tokens) as (rid,):
                    prefill.append(seconds([self._filler(rid, 0, tokens)]))
            with self._throw_away([f"helix-probe-decode-{i}" for i in range(seqs)], context) as rids:
                self.execute([self._filler(rid, 0, context) for rid in rids])
                decode = [seconds([self._filler(rid, context + k, 1) for rid in rids]) for k in range(2)]
        except Exception as err:
            raise EngineStartError(f"layers [{self.start}, {self.end}) failed their start-up probe: {err}") from err
        return Calibration(tokens, min(prefill), seqs, context, min(decode))

    @contextlib.contextmanager
    def _throw_away(self, request_ids: list[str], prompt_len: int) -> Iterator[list[str]]:
        """Requests of start-up batches, freed (KV blocks and runner state) however the batches end."""
        try:
            for rid in request_ids:
                self.add_request(rid, [0] * prompt_len)
            yield request_ids
        finally:
            for rid in request_ids:
                self.free_request(rid)

    def _filler(self, request_id: str, start: int, count: int) -> StepItem:
        """A step of a start-up request; zero activations on the ranges after the first."""
        dtype = self.vllm_config.model_config.dtype
        rows = None if self.is_first else torch.zeros(count, self.hidden_size, dtype=dtype)
        return StepItem(request_id, start, count, [] if start == 0 else [0], rows, rows)

    def close(self) -> None:
        """Stop the tensor-parallel rank processes, if any (they also stop when this process exits)."""
        self._ranks.close()

    def free_request(self, request_id: str) -> None:
        """Forget the request and return its KV blocks (safe to call twice)."""
        state = self._requests.pop(request_id, None)
        self._blocks.free(request_id)
        if state is not None and state.sent_to_runner:
            self._finished.add(request_id)

    def execute(self, batch: Sequence[StepItem],
                stream: Sequence[StreamBlock] | None = None) -> HiddenBatch | list[TokenResult]:
        """Run one batch; results come back in the order of ``batch``. After the first range, the previous node's
        rows come in ``stream`` (blocks as its steps brought them) or else with each item."""
        if not batch:
            return []
        # structured outputs: the scheduler's bitmask rows, applied before sampling as vLLM's runner does
        masks = {i.request_id: i.grammar_bitmask for i in batch if i.grammar_bitmask is not None and self.is_last}
        incoming = None if self.is_first else self._incoming(batch, stream)  # checked before any state changes
        sched_out = self._prepare(batch, bool(masks))
        started, cpu = time.time(), time.thread_time()
        out = self._ranks.run_step(sched_out, incoming, seam.grammar_output(masks))
        if self._on_gpu:  # a GPU forward returns before it ran: time (and probe) the work itself
            torch.cuda.synchronize()
        # the vLLM runner's forward, for hot-path tracing: wall-clock span, this thread's CPU seconds
        self.model_span, self.model_cpu = (started, time.time()), time.thread_time() - cpu
        for item in batch:
            self._requests[item.request_id].num_computed += item.num_tokens
        if not self.is_last:
            return self._hidden_batch(batch, out)
        return self._token_results(batch, out)

    # ------------------------------------------------------------ execute internals

    def _prepare(self, batch: Sequence[StepItem], structured: bool) -> SchedulerOutput:
        new_reqs, cached, scheduled = [], [], {}
        for item in batch:
            state = self._state(item)
            new_blocks = self._blocks.grow(item.request_id, state.num_computed + item.num_tokens)
            scheduled[item.request_id] = item.num_tokens
            if not state.sent_to_runner:
                state.sent_to_runner = True
                new_reqs.append(
                    seam.new_request(
                        item.request_id,
                        state.prompt_token_ids,
                        state.params,
                        self._blocks.table(item.request_id),
                        state.num_computed,
                    )
                )
                continue
            if not self.is_last:
                state.output_token_ids.extend(item.new_token_ids)
            cached.append(
                (
                    item.request_id,
                    list(item.new_token_ids),
                    new_blocks,
                    state.num_computed,
                    len(state.output_token_ids),
                )
            )
        finished, self._finished = self._finished, set()
        return seam.scheduler_output(new_reqs, cached, scheduled, finished, structured)

    def _state(self, item: StepItem) -> _Request:
        state = self._requests.get(item.request_id)
        if state is None:
            raise NodeError(f"request {item.request_id!r} is not on this node; call add_request first")
        if item.start_position != state.num_computed:
            raise NodeError(
                f"request {item.request_id!r}: step starts at position {item.start_position} but this "
                f"node has {state.num_computed} of its tokens cached"
            )
        if item.num_tokens < 1:
            raise NodeError(f"request {item.request_id!r}: a step needs at least one token")
        return state

    def _incoming(self, batch: Sequence[StepItem], stream: Sequence[StreamBlock] | None) -> list[StreamBlock]:
        """The previous node's rows of the residual stream for every request of the batch, checked: the pair, or
        the summed stream alone (see the module)."""
        if stream is None:
            for item in batch:
                if item.hidden_states is None:
                    raise NodeError(f"request {item.request_id!r}: layers [{self.start}, {self.end}) need "
                                    "hidden_states from the previous node")
            stream = [StreamBlock.of(item) for item in batch]
        rows = {rid: n for block in stream for rid, n in zip(block.request_ids, block.counts, strict=True)}
        for item in batch:
            if rows.pop(item.request_id, None) != item.num_tokens:
                raise NodeError(f"request {item.request_id!r}: layers [{self.start}, {self.end}) need its "
                                f"{item.num_tokens} rows of hidden_states from the previous node")
        if rows:
            raise NodeError(f"hidden_states came for requests {sorted(rows)}, which are not in the batch")
        paired = stream[0].residual is not None
        for block in stream:
            if (block.residual is not None) != paired:
                raise NodeError(f"requests {block.request_ids}: rows come with a residual and without one in one batch")
            expected = (sum(block.counts), self.hidden_size)
            for name, t in (("hidden_states", block.hidden_states), ("residual", block.residual)):
                if t is not None and tuple(t.shape) != expected:
                    raise NodeError(f"requests {block.request_ids}: {name} has shape {tuple(t.shape)}, "
                                    f"expected {expected}")
        return list(stream)

    def _hidden_batch(self, batch: Sequence[StepItem], out: IntermediateTensors) -> HiddenBatch:
        sizes = {item.request_id: item.num_tokens for item in batch}
        rows, pos = {}, 0
        for rid in self._ranks.batch_order():
            rows[rid] = (pos, pos + sizes[rid])
            pos += sizes[rid]
        # one copy out of the runner's buffers (the next batch overwrites them), in runner order: a node forwarding
        # the whole batch sends it without another copy
        hidden, residual = out["hidden_states"][:pos], out["residual"][:pos]
        if self.sends_summed_stream:
            hidden, residual = hidden + residual, None
        else:
            hidden, residual = hidden.clone(), residual.clone()
        return HiddenBatch(hidden, residual, rows, list(sizes))

    def _token_results(self, batch: Sequence[StepItem], out: ModelRunnerOutput) -> list[TokenResult]:
        index = out.req_id_to_index
        results = []
        for item in batch:
            i = index[item.request_id]
            sampled = out.sampled_token_ids[i]
            prompt_logprobs = _prompt_logprob_rows(out.prompt_logprobs_dict.get(item.request_id))
            if not sampled:  # a prefill chunk that does not end the prompt
                results.append(TokenResult(item.request_id, None, prompt_logprobs=prompt_logprobs))
                continue
            state = self._requests[item.request_id]
            token = int(sampled[-1])
            state.output_token_ids.append(token)
            reason = self._finish_reason(state, token)
            row = _logprob_row(out.logprobs, i)
            logprobs = {t: lp for t, lp in zip(row[0], row[1], strict=True)} if row else None
            results.append(TokenResult(item.request_id, token, logprobs, reason is not None, reason, row,
                                       prompt_logprobs))
        return results

    def _finish_reason(self, state: _Request, token: int) -> str | None:
        params, n_out = state.params, len(state.output_token_ids)
        if n_out >= params.min_tokens:
            if not params.ignore_eos and token in self._eos:
                return "stop"
            if token in (params.stop_token_ids or ()):
                return "stop"
        if params.max_tokens is not None and n_out >= params.max_tokens:
            return "length"
        if len(state.prompt_token_ids) + n_out >= self.vllm_config.model_config.max_model_len:
            return "length"
        return None


def _logprob_row(lists: LogprobsLists | None, i: int) -> LogprobRow | None:
    if lists is None:
        return None
    ids, lps = lists.logprob_token_ids[i], lists.logprobs[i]
    return [int(t) for t in ids], [float(lp) for lp in lps], int(lists.sampled_token_ranks[i])


def _prompt_logprob_rows(tensors: LogprobsTensors | None) -> PromptLogprobRows | None:
    """vLLM's prompt LogprobsTensors as lists: ids and logprobs of [prompt token, top-k...], the prompt token's rank."""
    if tensors is None:
        return None
    ids, lps, ranks = tensors[:3]
    return ids.tolist(), lps.tolist(), ranks.tolist()


def _check_range(layer_range: tuple[int, int], total: int, num_layers_total: int | None) -> tuple[int, int]:
    if num_layers_total is not None and num_layers_total != total:
        raise EngineStartError(f"num_layers_total={num_layers_total} but the model has {total} layers")
    start, end = (int(v) for v in layer_range)
    if not 0 <= start < end <= total:
        raise EngineStartError(
            f"layer range [{start}, {end}) is outside the model's {total} layers; "
            f"need 0 <= start < end <= {total}"
        )
    return start, end


def _memory_budget(fraction: float) -> int:
    if not 0.0 < fraction < 1.0:
        raise EngineStartError(f"kv_fraction must be in (0, 1), got {fraction}")
    return int(_available_memory() * fraction)


def _available_memory() -> int:
    if torch.cuda.is_available():
        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def _check_fits_in_memory(kv_cache_bytes: int) -> None:
    available = _available_memory()
    if kv_cache_bytes <= 0 or kv_cache_bytes > available:
        raise EngineStartError(
            f"KV cache of {kv_cache_bytes / 2**30:.2f} GiB does not fit: {available / 2**30:.2f} GiB "
            "available on this device; lower kv_cache_bytes / kv_fraction"
        )


def _load_config(path: str, config: WorkerConfig, kv_cache_bytes: int, layers: tuple[int, int]) -> VllmConfig:
    try:
        return seam.make_vllm_config(path, config, dtype=host.resolve_dtype(config.dtype),
                                     kv_cache_bytes=kv_cache_bytes, layers=layers)
    except Exception as err:  # vLLM raises many types here; the user needs one message
        raise EngineStartError(f"vLLM cannot load the model at {path!r}: {_one_line(err)}") from err


def _one_line(err: Exception) -> str:
    """vLLM's config checks are pydantic validators, whose errors span lines: keep their messages."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in errors())
    return " ".join(str(err).split())


def _check_tensor_parallel(size: int) -> int:
    """TP over GPUs needs as many visible devices; on a CPU host the ranks are processes sharing its cores."""
    if torch.cuda.is_available() and size > torch.cuda.device_count():
        raise EngineStartError(f"tensor parallel size {size} needs {size} GPUs; {torch.cuda.device_count()} visible "
                               "(CUDA_VISIBLE_DEVICES)")
    return size


def _load_ranks(vllm_config: VllmConfig, layers: tuple[int, int, int], tp: int, path: str) -> LocalRank | RankProcesses:
    """The node's vLLM worker in this process, or (tensor parallelism) its ``tp`` rank processes."""
    try:
        if tp > 1:
            return RankProcesses(vllm_config, layers, tp)
        return LocalRank(vllm_config, seam.LayerRange(*layers, vllm_config))
    except Exception as err:
        raise EngineStartError(f"vLLM cannot load the weights of {path!r}: {err}") from err
