"""Drift checks: the vLLM symbols and signatures ``vllm_helix.executor.seam`` relies on still exist."""

import dataclasses
import inspect

import pytest

from vllm_helix.errors import EngineStartError
from vllm_helix.executor import seam


def test_installed_vllm_is_in_the_supported_range():
    seam.check_vllm_version()


@pytest.mark.parametrize("version", ["0.10.2", "0.40.0", "1.0.0", "dev"])
def test_unsupported_vllm_versions_are_refused_with_the_range(version):
    with pytest.raises(EngineStartError, match=r">= 0\.11"):
        seam.check_vllm_version(version)


def _params(fn) -> set[str]:
    return set(inspect.signature(fn).parameters)


def test_layer_range_hooks_exist():
    import vllm.distributed.parallel_state as ps
    import vllm.distributed.utils as dutils
    from vllm.model_executor.models import utils as mutils

    assert {"num_hidden_layers", "pp_rank", "pp_size"} <= _params(dutils.get_pp_indices)
    assert "get_pp_indices" in inspect.getsource(mutils.make_layers)
    assert hasattr(ps, "_PP") and callable(ps.get_pp_group)
    assert isinstance(ps.GroupCoordinator.is_first_rank, property)
    assert isinstance(ps.GroupCoordinator.is_last_rank, property)
    assert callable(mutils.is_pp_missing_parameter) and mutils.PPMissingLayer


def test_worker_and_runner_entry_points_exist():
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    assert {"all_kwargs"} <= _params(WorkerWrapperBase.init_worker)
    for name in (
        "init_device",
        "load_model",
        "initialize_from_config",
        "get_kv_cache_spec",
        "get_supported_kv_cache_layouts",
        "set_kv_cache_layout",
    ):
        assert callable(getattr(Worker, name)), name
    assert {"scheduler_output", "intermediate_tensors"} <= _params(GPUModelRunner.execute_model)
    assert {"grammar_output"} <= _params(GPUModelRunner.sample_tokens)
    assert {"num_tokens", "intermediate_tensors", "sync_self"} <= _params(
        GPUModelRunner.sync_and_gather_intermediate_tensors
    )


def test_scheduler_output_types_have_the_fields_we_fill():
    from vllm.v1.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput

    def fields(cls):
        return {f.name for f in dataclasses.fields(cls)}

    assert {
        "req_id",
        "prompt_token_ids",
        "mm_features",
        "sampling_params",
        "pooling_params",
        "block_ids",
        "num_computed_tokens",
        "lora_request",
    } <= fields(NewRequestData)
    assert {
        "req_ids",
        "resumed_req_ids",
        "new_token_ids",
        "all_token_ids",
        "new_block_ids",
        "num_computed_tokens",
        "num_output_tokens",
    } <= fields(CachedRequestData)
    assert {
        "scheduled_new_reqs",
        "scheduled_cached_reqs",
        "num_scheduled_tokens",
        "total_num_scheduled_tokens",
        "scheduled_spec_decode_tokens",
        "scheduled_encoder_inputs",
        "finished_req_ids",
        "free_encoder_mm_hashes",
    } <= fields(SchedulerOutput)


def test_kv_cache_and_loader_helpers_exist():
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
    from vllm.v1.attention.backends.utils import resolve_kv_cache_layout
    from vllm.v1.core.kv_cache_utils import get_kv_cache_configs
    from vllm.v1.outputs import LogprobsLists, ModelRunnerOutput

    assert {"vllm_config", "kv_cache_specs", "available_memory"} <= _params(get_kv_cache_configs)
    assert {"vllm_config", "supported_layouts"} <= _params(resolve_kv_cache_layout)
    assert {"model_config", "model"} <= _params(DefaultModelLoader.get_all_weights)
    assert {"kv_cache_memory_bytes", "max_num_batched_tokens", "enforce_eager", "async_scheduling"} <= {
        f.name for f in dataclasses.fields(EngineArgs)
    }
    assert {"req_ids", "req_id_to_index", "sampled_token_ids", "logprobs"} <= {
        f.name for f in dataclasses.fields(ModelRunnerOutput)
    }
    assert {"logprob_token_ids", "logprobs"} <= set(LogprobsLists._fields)


# --- what the serving path (plugin, HelixScheduler, HelixExecutor) relies on


def test_scheduler_hooks_the_helix_scheduler_overrides():
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.request import FinishReason, RequestStatus

    source = inspect.getsource(Scheduler)
    # failed requests are finished through this set in update_from_output
    assert "self.encoder_cache_mismatch_reqs" in source and "RequestStatus.FINISHED_ERROR" in source
    assert {"request"} <= _params(Scheduler._free_request)
    assert callable(Scheduler.schedule) and callable(Scheduler.update_from_output)
    assert RequestStatus.FINISHED_ERROR.name and FinishReason.ERROR


def test_executor_seams():
    from vllm.config import VllmConfig
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.executor.abstract import Executor
    from vllm.v1.outputs import ModelRunnerOutput

    assert isinstance(VllmConfig.max_concurrent_batches, property)
    assert "resolve_obj_by_qualname" in inspect.getsource(Executor.get_class)
    assert {"scheduler_output", "non_block"} <= _params(Executor.execute_model)
    assert {"grammar_output", "non_block"} <= _params(Executor.sample_tokens)
    fields = {f.name for f in dataclasses.fields(ModelRunnerOutput)}
    assert {"req_ids", "req_id_to_index", "sampled_token_ids"} <= fields
    assert {"distributed_executor_backend", "scheduler_cls", "additional_config"} <= {
        f.name for f in dataclasses.fields(EngineArgs)}


def test_nodes_with_different_layers_get_different_compile_cache_keys(tiny_llama_path):
    """vLLM keys its torch.compile cache on the config hash: two ranges of one model must not share it."""
    kwargs = dict(max_num_batched_tokens=64, max_num_seqs=8, max_model_len=256, kv_cache_bytes=1 << 24,
                  dtype="float32", seed=0, enforce_eager=False)
    first = seam.make_vllm_config(str(tiny_llama_path), layers=(0, 3), **kwargs)
    second = seam.make_vllm_config(str(tiny_llama_path), layers=(3, 8), **kwargs)
    again = seam.make_vllm_config(str(tiny_llama_path), layers=(0, 3), **kwargs)
    assert first.compute_hash() != second.compute_hash()
    assert first.compute_hash() == again.compute_hash()


def test_structured_output_logprob_and_request_check_seams():
    """Grammar bitmask to the last node, prompt logprobs back, per-request refusals (issue #18)."""
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.core.sched.output import GrammarOutput, SchedulerOutput
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.outputs import LogprobsTensors, ModelRunnerOutput

    assert {"has_structured_output_requests", "pending_structured_output_tokens"} <= {
        f.name for f in dataclasses.fields(SchedulerOutput)}
    assert {"structured_output_request_ids", "grammar_bitmask"} <= {f.name for f in dataclasses.fields(GrammarOutput)}
    assert "prompt_logprobs_dict" in {f.name for f in dataclasses.fields(ModelRunnerOutput)}
    assert LogprobsTensors._fields[:3] == ("logprob_token_ids", "logprobs", "selected_token_ranks")
    assert {"params"} <= _params(InputProcessor._validate_params)
    assert {"parameter"} <= _params(VLLMValidationError)
