"""HelixExecutor: a vLLM executor whose "workers" are the partial-layer nodes of a Helix plan.

It runs no model itself. `execute_model` hands each batch to the coordinator, which sends every
request's step to the first node of its route and resolves a Future when the last nodes have sent the
sampled tokens back; `--helix-depth` batches are kept in flight so all nodes stay busy (under `--helix-async`
one more, sent before the tokens it decodes are back: `scheduler.py`, `node/async_feed.py`). The scheduler's
own KV cache is bookkeeping only (one block pool as large as the cluster's smallest per-layer KV
capacity); the real caches live on the nodes, and HelixScheduler admits only what fits there.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import TYPE_CHECKING

import numpy as np
import torch
from vllm.v1.executor.abstract import Executor
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheSpec
from vllm.v1.outputs import LogprobsLists, LogprobsTensors, ModelRunnerOutput

from vllm_helix.coordinator.coordinator import ServingCoordinator
from vllm_helix.errors import ConfigError, HelixError
from vllm_helix.node.config import WorkerConfig
from vllm_helix.options import helix_options
from vllm_helix.planner.files import load_plan
from vllm_helix.seams import check_vllm_version
from vllm_helix.unsupported import model_error
from vllm_helix.wire import LogprobRow, PromptLogprobRows

if TYPE_CHECKING:
    from vllm.v1.core.sched.output import GrammarOutput, SchedulerOutput

logger = logging.getLogger(__name__)


def _model_output(req_ids: list[str], sampled: list[list[int]], rows: list[LogprobRow | None],
                  prompt_rows: dict[str, PromptLogprobRows]) -> ModelRunnerOutput:
    return ModelRunnerOutput(req_ids=req_ids, req_id_to_index={r: i for i, r in enumerate(req_ids)},
                             sampled_token_ids=sampled, logprobs=_logprobs_lists(sampled, rows),
                             prompt_logprobs_dict={rid: _logprobs_tensors(*row) for rid, row in prompt_rows.items()})


def _logprobs_tensors(ids: list[list[int]], logprobs: list[list[float]], ranks: list[int]) -> LogprobsTensors:
    """A request's prompt logprobs as vLLM's runner returns them (rows for prompt positions 1..)."""
    return LogprobsTensors(torch.tensor(ids, dtype=torch.int64), torch.tensor(logprobs, dtype=torch.float32),
                           torch.tensor(ranks, dtype=torch.int64))


def _logprobs_lists(sampled: list[list[int]], rows: list[LogprobRow | None]) -> LogprobsLists | None:
    """vLLM's batch logprobs: row i for request i (its one sampled token), padded to the widest top-k."""
    if not any(rows):
        return None
    width = max(len(r[0]) for r in rows if r)
    ids, lps, ranks = [], [], []
    for tokens, row in zip(sampled, rows, strict=True):
        row = row or ([tokens[0] if tokens else 0], [0.0], 1)  # unread: no logprobs asked, or no token yet
        pad = width - len(row[0])
        ids.append(row[0] + [0] * pad)
        lps.append(row[1] + [float("-inf")] * pad)
        ranks.append(row[2])
    return LogprobsLists(np.array(ids, dtype=np.int64), np.array(lps, dtype=np.float32),
                         np.array(ranks, dtype=np.int64))


def _done(value: None) -> Future[None]:
    future: Future[None] = Future()
    future.set_result(value)
    return future


class HelixExecutor(Executor):
    uses_ray = False
    supports_pp = False

    def _init_executor(self) -> None:
        check_vllm_version()
        options = helix_options(self.vllm_config.additional_config)
        if not options["plan"]:
            raise ConfigError("--executor helix needs --helix-plan PLAN.yaml (write one with `vllm-helix plan`)")
        refused = model_error(self.model_config.is_multimodal_model, self.model_config.runner_type)
        if refused:
            raise ConfigError(f"{self.model_config.model}: {refused}")
        plan = load_plan(options["plan"])
        hf_layers = self.model_config.hf_text_config.num_hidden_layers
        if plan.model.num_layers != hf_layers:
            raise ConfigError(f"{options['plan']}: the plan splits {plan.model.num_layers} layers, but "
                             f"{self.model_config.model} has {hf_layers}")
        scheduler = self.vllm_config.scheduler_config
        dtype = str(self.model_config.dtype).removeprefix("torch.")
        # local nodes follow the server's own settings
        local_nodes = WorkerConfig(kv_fraction=options["kv_fraction"], kv_cache_bytes=options["kv_cache_bytes"],
                                   max_num_batched_tokens=scheduler.max_num_batched_tokens,
                                   max_num_seqs=scheduler.max_num_seqs, max_model_len=self.model_config.max_model_len,
                                   dtype=dtype, enforce_eager=self.model_config.enforce_eager,
                                   seed=self.model_config.seed or 0, start_timeout_s=options["start_timeout_s"],
                                   insecure=options["insecure"])
        # Nodes hold the KV cache; the scheduler's prefix cache would skip prompt tokens they never saw.
        if self.vllm_config.cache_config.enable_prefix_caching:
            logger.info("prefix caching is off under --executor helix: the nodes hold the KV cache, so every prompt "
                        "is computed in full")
        self.vllm_config.cache_config.enable_prefix_caching = False
        if options["async"]:
            logger.info("Helix: async scheduling across the chain (--helix-async): next decode steps leave before "
                        "their tokens are back, which each route's last node hands to its first")
        self.coordinator = ServingCoordinator(plan, self.model_config.model, options, _model_output, local_nodes)
        self.coordinator.start()
        self._last: Future | None = None
        self._held: SchedulerOutput | None = None  # a batch waiting for its grammar bitmask (structured outputs)

    # ------------------------------------------------------------------ KV bookkeeping for vLLM

    def get_kv_cache_specs(self) -> list[dict[str, KVCacheSpec]]:
        text = self.model_config.hf_text_config
        heads = text.num_attention_heads
        spec = FullAttentionSpec(
            block_size=self.cache_config.block_size,
            num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_size=getattr(text, "head_dim", None) or text.hidden_size // heads,
            dtype=self.model_config.dtype if isinstance(self.model_config.dtype, torch.dtype) else torch.float32,
        )
        return [{"helix.cluster": spec}]

    def determine_available_memory(self) -> list[int]:
        """Bytes for as many blocks as the cluster holds tokens in its least-provisioned layer."""
        spec = self.get_kv_cache_specs()[0]["helix.cluster"]
        block = spec.block_size
        plan, tokens = self.coordinator.plan, self.coordinator.kv_tokens
        per_layer = [sum(tokens[n] for n, r in plan.placement.ranges.items() if r.start <= layer < r.end)
                     for layer in range(plan.model.num_layers)]
        # + one block per sequence: vLLM rounds every request up to whole blocks, and running out here
        # would make it preempt requests whose KV the nodes still hold
        blocks = min(per_layer) // block + self.vllm_config.scheduler_config.max_num_seqs
        return [blocks * spec.page_size_bytes]

    def initialize_from_config(self, kv_cache_configs: list[KVCacheConfig]) -> None:
        pass  # the nodes own their caches

    def compile_or_warm_up_model(self) -> None:
        pass

    def get_supported_kv_cache_layouts(self) -> list[list[str]]:
        return [["LBHNC", "LBNHC"]]  # the coordinator holds no KV tensors; any layout will do

    def set_kv_cache_layout(self, layout_name: str) -> None:
        pass

    @property
    def supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    # ------------------------------------------------------------------ batches

    def execute_model(self, scheduler_output: SchedulerOutput, non_block: bool = False):
        """Send the batch now, unless a structured-output request samples in it: then it waits for the grammar
        bitmask that EngineCore computes after this call and hands to `sample_tokens` (None = "sample next")."""
        if scheduler_output.has_structured_output_requests and scheduler_output.total_num_scheduled_tokens:
            self._held, self._last = scheduler_output, None
            return _done(None) if non_block else None
        self._last = self.coordinator.submit(scheduler_output)
        return self._last if non_block else self._last.result()

    def sample_tokens(self, grammar_output: GrammarOutput | None, non_block: bool = False):
        if self._held is not None:  # the grammar bitmask rides with the batch to each route's last node
            self._last = self.coordinator.submit(self._held, grammar_output)
            self._held = None
        assert self._last is not None
        return self._last if non_block else self._last.result()

    def take_draft_token_ids(self):
        return None

    def reset_mm_cache(self) -> None:
        pass  # text-only nodes keep no multimodal cache

    def reset_encoder_cache(self) -> None:
        pass

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None, non_block=False):
        name = method if isinstance(method, str) else getattr(method, "__name__", "callable")
        raise HelixError(f"the Helix executor does not support worker RPC {name!r}")

    def check_health(self) -> None:
        self.coordinator.check_health()

    def shutdown(self) -> None:
        coordinator = self.__dict__.pop("coordinator", None)  # shut down once
        if coordinator is not None:
            coordinator.shutdown()
