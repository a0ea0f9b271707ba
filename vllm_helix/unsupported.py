"""What `--executor helix` cannot carry, refused up front: at `vllm serve` start-up or per request (HTTP 400).

Helix nodes run vLLM's model runner on their layer range with each request's SamplingParams, and the last node
samples under the scheduler's grammar bitmask. Anything that needs more on the nodes -- a drafter, adapters,
encoders, poolers, runner-wide settings the nodes are not given -- would be a 500 or a silently different answer,
so it is refused here instead. Tables only, no vLLM imports: the plugin checks the parsed `vllm serve` arguments
(a usage error, exit 2), `coordinator/patches/request_checks.py` the parameters of each request, the executor the
model (multimodal and pooling models).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NOT_SUPPORTED = "is not supported with --executor helix"


def _unset(value: Any) -> bool:
    return not value


def _one(value: Any) -> bool:
    return value in (None, 1)


@dataclass(frozen=True, slots=True)
class ServeFlag:
    attribute: str  # of vLLM's parsed arguments (EngineArgs)
    flag: str
    feature: str
    allowed: Callable[[Any], bool] = _unset


SERVE_FLAGS = (
    ServeFlag("speculative_config", "--speculative-config", "speculative decoding"),
    ServeFlag("enable_lora", "--enable-lora", "LoRA adapters"),
    ServeFlag("runner", "--runner", "pooling and embedding models", lambda v: v in (None, "auto", "generate")),
    ServeFlag("convert", "--convert", "pooling and embedding models", lambda v: v in (None, "auto", "none")),
    ServeFlag("pooler_config", "--pooler-config", "pooling and embedding models"),
    ServeFlag("enable_prompt_embeds", "--enable-prompt-embeds", "prompt embeddings as input"),
    ServeFlag("enable_mm_embeds", "--enable-mm-embeds", "multimodal inputs"),
    ServeFlag("logits_processors", "--logits-processors", "custom logits processors"),
    ServeFlag("logprobs_mode", "--logprobs-mode", "a logprobs mode other than raw_logprobs",
              lambda v: v in (None, "raw_logprobs")),
    ServeFlag("enable_trace_replay", "--enable-trace-replay", "trace replay (trace_decode_token_ids)"),
    ServeFlag("watermark_config", "--watermark-config", "watermarking"),
    ServeFlag("enable_return_routed_experts", "--enable-return-routed-experts", "returning routed experts"),
    ServeFlag("return_sampling_mask", "--return-sampling-mask", "sampling distribution replay"),
    ServeFlag("kv_transfer_config", "--kv-transfer-config", "KV cache transfer (disaggregated prefill)"),
    ServeFlag("ec_transfer_config", "--ec-transfer-config", "encoder cache transfer"),
    ServeFlag("kv_sharing_fast_prefill", "--kv-sharing-fast-prefill", "KV-sharing fast prefill"),
    ServeFlag("diffusion_config", "--diffusion-config", "diffusion models"),
    ServeFlag("async_scheduling", "--async-scheduling", "vLLM's asynchronous scheduling (Helix's own: --helix-async)"),
    ServeFlag("enable_sleep_mode", "--enable-sleep-mode", "sleep mode"),
    # a plan's nodes are Helix's parallelism; vLLM's own would be silently ignored by the nodes
    ServeFlag("tensor_parallel_size", "--tensor-parallel-size", "vLLM-wide tensor parallelism (each node has its own: "
              "`gpus`/`tp` in the cluster file)",
              _one),
    ServeFlag("pipeline_parallel_size", "--pipeline-parallel-size", "pipeline parallelism (the plan places layers)",
              _one),
    ServeFlag("data_parallel_size", "--data-parallel-size", "data parallelism (the plan's replicas are Helix's)", _one),
    ServeFlag("prefill_context_parallel_size", "--prefill-context-parallel-size", "context parallelism", _one),
    ServeFlag("decode_context_parallel_size", "--decode-context-parallel-size", "context parallelism", _one),
)

# SamplingParams fields whose feature lives in the model runner but needs engine state the nodes are not given
REQUEST_FIELDS = {
    "thinking_token_budget": "thinking_token_budget (reasoning budgets)",
    "prompt_logprob_token_ids": "prompt_logprob_token_ids (scoring chosen prompt token ids)",
}


def serve_flag_errors(arguments: Any) -> list[str]:
    """One message per `vllm serve` flag given that Helix cannot carry."""
    errors = []
    for option in SERVE_FLAGS:
        value = getattr(arguments, option.attribute, None)
        if not option.allowed(value):
            errors.append(f"{option.flag} {value!r} ({option.feature}) {NOT_SUPPORTED}")
    return errors


def request_error(params: Any) -> tuple[str, str] | None:
    """(field, message) for the first SamplingParams field Helix cannot carry, or None."""
    for field, feature in REQUEST_FIELDS.items():
        if getattr(params, field, None) is not None:
            return field, f"{feature} {NOT_SUPPORTED}"
    return None


def model_error(is_multimodal: bool, runner_type: str) -> str | None:
    """The served model itself: Helix nodes run text-generating decoder layers."""
    if is_multimodal:
        return f"a multimodal model {NOT_SUPPORTED} (Helix nodes run text decoder layers)"
    if runner_type != "generate":
        return f"a {runner_type} model (embeddings, classification, scoring) {NOT_SUPPORTED}"
    return None
