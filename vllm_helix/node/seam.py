"""The node side's seams: everything the partial-layer worker does with vLLM internals.

Each seam here is an entry of the ledger in ``vllm_helix/seams.py`` (why, until when, drift check); in short:

* ``EngineArgs.create_engine_config`` builds the ``VllmConfig`` with the platform's adjustments.
* ``WorkerWrapperBase.init_worker`` builds the platform's worker (``CPUWorker`` here, the CUDA
  ``Worker`` on GPUs); we construct it in-process (rank 0 of a world of 1) and call
  ``init_device`` / ``load_model`` / ``initialize_from_config`` / ``execute_model`` /
  ``sample_tokens`` on it and its ``model_runner`` -- the same calls vLLM's executors make.
* Layer ranges: ``make_layers`` asks ``vllm.distributed.utils.get_pp_indices`` and models ask
  ``get_pp_group().is_first_rank / is_last_rank``. While a worker is active (``LayerRange``
  context) ``get_pp_indices`` answers ``[start, end)`` and the PP group is a proxy whose first/last
  answers follow the range, while ``world_size`` stays 1 so no PP communication is attempted.
  Built this way the model holds ``PPMissingLayer`` outside the range, and the weight loader skips
  those parameters (``is_pp_missing_parameter``).
* The runner's ``sync_and_gather_intermediate_tensors`` hook (called in ``_preprocess`` on
  non-first ranks) is replaced per instance: it assembles the incoming residual stream (blocks of rows as
  the steps brought them) in the runner's own batch order (the runner reorders its batch).
* ``SchedulerOutput`` / ``NewRequestData`` / ``CachedRequestData`` are what the worker feeds the
  runner; with PP the non-last ranks learn sampled tokens from ``new_token_ids`` exactly as with
  vLLM's own non-async pipeline parallelism.
* Structured outputs: on the last range ``sample_tokens`` gets a ``GrammarOutput`` (request ids + the
  scheduler's int32 bitmask rows), which the runner applies with ``apply_grammar_bitmask`` before sampling,
  as with vLLM's own executors. Prompt logprobs come back in ``ModelRunnerOutput.prompt_logprobs_dict``
  (``LogprobsTensors``), sampled-token ones in ``.logprobs`` (``LogprobsLists``).
* ``get_kv_cache_configs`` turns the local attention layers' specs and a byte budget into a
  ``KVCacheConfig``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from vllm_helix.node.types import StreamBlock, rows_in_order

if TYPE_CHECKING:
    import numpy as np
    from vllm import SamplingParams
    from vllm.config import VllmConfig
    from vllm.distributed.parallel_state import GroupCoordinator
    from vllm.sequence import IntermediateTensors
    from vllm.v1.core.sched.output import GrammarOutput, NewRequestData, SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig, KVCacheSpec
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.worker_base import WorkerBase

    from vllm_helix.node.config import WorkerConfig

_activate_lock = threading.RLock()


# ---------------------------------------------------------------- config


def make_vllm_config(
    model_path: str, config: WorkerConfig, *, dtype: str, kv_cache_bytes: int, layers: tuple[int, int]
) -> VllmConfig:
    """The VllmConfig a whole-model vLLM engine would get (no prefix caching, sync scheduling).

    `dtype` is `config.dtype` resolved for this host. Without enforce_eager the layers run through vLLM's
    torch.compile, as in `vllm serve`. The layer range goes into additional_config because vLLM keys its
    compile cache on the config's hash: without it two nodes with different ranges of one model would
    share (and run) each other's compiled graph.
    """
    from vllm.engine.arg_utils import EngineArgs

    # the hooks below are on the V1 GPUModelRunner (which CPUModelRunner extends); on CUDA with Triton vLLM
    # 0.32 picks its Model Runner V2 unless told otherwise, whose batch and PP handling they do not reach
    os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "0"
    args = EngineArgs(
        model=model_path,
        dtype=dtype,
        seed=config.seed,
        enforce_eager=config.enforce_eager,
        additional_config={"helix_layers": list(layers)},
        max_num_batched_tokens=config.max_num_batched_tokens,
        max_num_seqs=config.max_num_seqs,
        max_model_len=config.max_model_len,
        kv_cache_memory_bytes=kv_cache_bytes,
        enable_prefix_caching=False,
        enable_chunked_prefill=True,
        async_scheduling=False,
        load_format="safetensors",
        # tensor parallelism inside the node: vLLM's own TP over the node's rank processes (node/ranks.py)
        tensor_parallel_size=config.tensor_parallel_size or 1,
        distributed_executor_backend="mp" if (config.tensor_parallel_size or 1) > 1 else None,
    )
    return args.create_engine_config()


def num_hidden_layers(vllm_config: VllmConfig) -> int:
    return int(vllm_config.model_config.get_total_num_hidden_layers())


def hidden_size(vllm_config: VllmConfig) -> int:
    return int(vllm_config.model_config.get_hidden_size())


def eos_token_ids(vllm_config: VllmConfig) -> set[int]:
    """EOS ids from the HF config and generation_config.json (what vLLM's input processor uses)."""
    ids: set[int] = set()
    cfg = vllm_config.model_config
    for source in (cfg.hf_config.to_dict(), cfg.try_get_generation_config() or {}):
        eos = source.get("eos_token_id")
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
    return ids


# ---------------------------------------------------------------- layer range


class _RangePPGroup:
    """The real (world-size-1) PP group, except first/last rank follow the worker's layer range."""

    def __init__(self, inner: GroupCoordinator, is_first: bool, is_last: bool) -> None:
        self._inner, self._is_first, self._is_last = inner, is_first, is_last

    @property
    def is_first_rank(self) -> bool:
        return self._is_first

    @property
    def is_last_rank(self) -> bool:
        return self._is_last

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class LayerRange:
    """Context that makes vLLM see a model split so that this process holds layers [start, end)."""

    def __init__(self, start: int, end: int, total: int, vllm_config: VllmConfig) -> None:
        self.start, self.end, self.total = start, end, total
        self.vllm_config = vllm_config

    def _indices(self, num_layers: int, pp_rank: int, pp_size: int) -> tuple[int, int]:
        if num_layers != self.total:  # a sub-model (e.g. a drafter) we do not split
            return 0, num_layers
        return self.start, self.end

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        import vllm.distributed.parallel_state as ps
        import vllm.distributed.utils as dutils
        from vllm.config import set_current_vllm_config

        with _activate_lock, set_current_vllm_config(self.vllm_config):
            outer = ps._PP  # None before the first worker's init_device creates the group
            real = outer._inner if isinstance(outer, _RangePPGroup) else outer
            saved_indices = dutils.get_pp_indices
            if real is not None:
                ps._PP = _RangePPGroup(real, self.start == 0, self.end == self.total)
            dutils.get_pp_indices = self._indices
            try:
                yield
            finally:
                dutils.get_pp_indices = saved_indices
                if real is not None:
                    ps._PP = outer


# ---------------------------------------------------------------- worker


def create_worker(vllm_config: VllmConfig, layer_range: LayerRange, *, rank: int = 0,
                  init_method: str | None = None) -> WorkerBase:
    """Construct the platform's vLLM worker in this process and load the partial model.

    ``rank`` is this process's tensor-parallel rank (and local device index): rank 0 of a world of 1, or one of
    the node's rank processes (``node/ranks.py``), which all join ``init_method``, as vLLM's own workers do.
    """
    from vllm.utils.network_utils import get_distributed_init_method, get_open_port
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    init_method = init_method or get_distributed_init_method("127.0.0.1", get_open_port())
    wrapper = WorkerWrapperBase(rpc_rank=0)  # one kwargs entry, this rank's; loads the platform's kernel overrides
    wrapper.init_worker(
        all_kwargs=[
            dict(
                vllm_config=vllm_config,
                local_rank=rank,
                rank=rank,
                distributed_init_method=init_method,
                is_driver_worker=rank == 0,
            )
        ]
    )
    worker = wrapper.worker
    with layer_range.active():
        worker.init_device()
    with layer_range.active(), _counting_loader() as loaded:  # the PP group now exists
        worker.load_model()
    worker.helix_loaded_weights = loaded
    _install_gather_hook(worker.model_runner)
    return worker


@contextlib.contextmanager
def _counting_loader() -> Iterator[dict[str, int]]:
    """Pass only the held layers' checkpoint tensors to the model and count them (name -> bytes).

    The CPU backend repacks linear weights into oneDNN handles after loading (``weight`` becomes
    empty), so parameter sizes cannot show what a worker holds; the loaded tensors can.
    """
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
    from vllm.model_executor.models.utils import is_pp_missing_parameter

    loaded: dict[str, int] = {}
    original = DefaultModelLoader.get_all_weights

    def get_all_weights(self: Any, model_config: Any, model: torch.nn.Module) -> Iterator[Any]:
        for name, tensor in original(self, model_config, model):
            if is_pp_missing_parameter(name, model):
                continue  # another node's layer: dropped before it reaches the model
            loaded[name] = tensor.numel() * tensor.element_size()
            yield name, tensor

    DefaultModelLoader.get_all_weights = get_all_weights
    try:
        yield loaded
    finally:
        DefaultModelLoader.get_all_weights = original


def loaded_weight_bytes(worker: WorkerBase) -> dict[str, int]:
    """Checkpoint tensor name -> bytes, for the tensors this worker's model loaded."""
    return dict(worker.helix_loaded_weights)


def _install_gather_hook(runner: GPUModelRunner) -> None:
    """Non-first ranks: feed the runner the incoming residual stream in its own batch order."""
    from vllm.sequence import IntermediateTensors

    runner._helix_incoming = []

    def gather(num_tokens: int, intermediate_tensors: Any = None, sync_self: bool = False) -> IntermediateTensors:
        # the transport delivers host memory; the runner's layers want theirs (on a GPU), and a copy (in place)
        stream = rows_in_order(runner._helix_incoming, runner.input_batch.req_ids, runner.device)
        # the summed stream: the first add-norm adds a zero residual, same bits
        residual = stream[1] if len(stream) == 2 else torch.zeros_like(stream[0])
        tensors = {"hidden_states": stream[0], "residual": residual}
        pad = num_tokens - stream[0].shape[0]
        if pad > 0:
            tensors = {k: torch.nn.functional.pad(v, (0, 0, 0, pad)) for k, v in tensors.items()}
        return IntermediateTensors(tensors)

    runner.sync_and_gather_intermediate_tensors = gather


def empty_intermediate_tensors() -> IntermediateTensors:
    from vllm.sequence import IntermediateTensors

    return IntermediateTensors({})


def is_intermediate_tensors(obj: Any) -> bool:
    from vllm.sequence import IntermediateTensors

    return isinstance(obj, IntermediateTensors)


def batch_order(worker: WorkerBase) -> list[str]:
    """Request ids in the order the runner laid out the last batch's tokens."""
    return list(worker.model_runner.input_batch.req_ids)


# ---------------------------------------------------------------- KV cache


def kv_cache_spec(worker: WorkerBase) -> dict[str, KVCacheSpec]:
    return worker.get_kv_cache_spec()


def kv_cache_config(worker: WorkerBase, spec: dict[str, KVCacheSpec], kv_cache_bytes: int) -> KVCacheConfig:
    """Resolve the KV layout (as EngineCore does) and size the cache for the local attention layers."""
    from vllm.v1.attention.backends.utils import resolve_kv_cache_layout
    from vllm.v1.core.kv_cache_utils import get_kv_cache_configs

    vllm_config = worker.vllm_config
    layout = resolve_kv_cache_layout(
        vllm_config, [worker.get_supported_kv_cache_layouts()], list(spec.values())
    )
    worker.set_kv_cache_layout(layout.name)
    (config,) = get_kv_cache_configs(vllm_config, [spec], [kv_cache_bytes])
    config.kv_cache_layout = vllm_config.cache_config.kv_cache_layout
    return config


def page_size_bytes(spec: dict[str, KVCacheSpec]) -> int:
    """Bytes one KV block takes over all local attention layers."""
    return sum(s.page_size_bytes for s in spec.values())


def block_size(vllm_config: VllmConfig) -> int:
    return int(vllm_config.cache_config.block_size)


# ---------------------------------------------------------------- scheduler output


def sampling_params(**kwargs: Any) -> SamplingParams:
    from vllm import SamplingParams

    return SamplingParams(**kwargs)


def new_request(
    req_id: str, prompt_token_ids: list[int], params: SamplingParams, block_ids: list[int], num_computed: int
) -> NewRequestData:
    from vllm.v1.core.sched.output import NewRequestData

    return NewRequestData(
        req_id=req_id,
        prompt_token_ids=prompt_token_ids,
        mm_features=[],
        sampling_params=params,
        pooling_params=None,
        block_ids=(block_ids,),
        num_computed_tokens=num_computed,
        lora_request=None,
    )


def scheduler_output(
    new_reqs: list[NewRequestData],
    cached: list[tuple[str, list[int], list[int], int, int]],
    num_scheduled: dict[str, int],
    finished: set[str],
    has_structured_output: bool = False,
) -> Any:
    """``cached`` rows: (req_id, new_token_ids, new_block_ids, num_computed, num_output_tokens)."""
    from vllm.v1.core.sched.output import CachedRequestData, SchedulerOutput

    cached_data = CachedRequestData(
        req_ids=[row[0] for row in cached],
        resumed_req_ids=set(),
        new_token_ids=[row[1] for row in cached],
        all_token_ids={},
        new_block_ids=[(row[2],) for row in cached],
        num_computed_tokens=[row[3] for row in cached],
        num_output_tokens=[row[4] for row in cached],
    )
    return SchedulerOutput(
        scheduled_new_reqs=new_reqs,
        scheduled_cached_reqs=cached_data,
        num_scheduled_tokens=num_scheduled,
        total_num_scheduled_tokens=sum(num_scheduled.values()),
        scheduled_spec_decode_tokens={},
        scheduled_encoder_inputs={},
        finished_req_ids=finished,
        free_encoder_mm_hashes=[],
        has_structured_output_requests=has_structured_output,
    )


def grammar_output(bitmasks: dict[str, np.ndarray]) -> GrammarOutput | None:
    """vLLM's GrammarOutput for the structured-output requests of a batch (request id -> int32 bitmask row)."""
    import numpy as np
    from vllm.v1.core.sched.output import GrammarOutput

    if not bitmasks:
        return None
    return GrammarOutput(list(bitmasks), np.stack(list(bitmasks.values())))


def run_step(worker: WorkerBase, sched_out: SchedulerOutput, incoming: Sequence[StreamBlock] | None,
             grammar: GrammarOutput | None = None) -> ModelRunnerOutput | IntermediateTensors:
    """One forward: IntermediateTensors (non-last) or a ModelRunnerOutput (last, sampled under ``grammar``).
    ``incoming``: the residual stream from the previous node (None on the first range)."""
    runner = worker.model_runner
    runner._helix_incoming = incoming or []
    out = runner.execute_model(sched_out, empty_intermediate_tensors() if incoming else None)
    if out is None:  # last rank: logits are waiting for the sampler
        out = runner.sample_tokens(grammar)
    runner._helix_incoming = []
    return out


def inference_mode() -> Callable[..., Any]:
    return torch.inference_mode()
