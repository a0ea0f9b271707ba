"""OpenAI API conformance: every request feature sent to plain `vllm serve` and to Helix gives the same answer.

Both servers are the shared session ones (tests/serving/conftest.py): the tiny model, float32, and the Helix plan
head [0, 2) -> fast | slow [2, 8), so requests reach either of two last nodes. Answers are compared whole (text,
token ids, finish reasons, tool calls, logprob values to 1e-4), less ids and timestamps; sampling is greedy or
seeded. What Helix cannot carry must be refused up front (400 naming the feature, or a usage error at start-up).

`SAMPLING_FIELDS` accounts for every `vllm.SamplingParams` field: a conformance case here, a refusal, or why it
never reaches the nodes. A field a new vLLM adds fails `test_every_sampling_parameter_is_accounted_for` until it
gets one of those.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
from serve_helpers import COMMON, PROMPTS, post

# engine tests are marked one by one: the accounting tests start no engine and run in every quick pass


VOLATILE = {"id", "created", "created_at", "completed_at", "system_fingerprint", "metrics"}
TOLERANCE = 1e-4
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city for some days",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo", "Rome"]},
                                                    "unit": {"type": "string", "enum": ["celsius", "kelvin"]}},
                   "required": ["city", "unit"]}}}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "enum": ["Ada", "Alan"]},
                                           "admin": {"type": "boolean"}},
          "required": ["name", "admin"], "additionalProperties": False}


def _completion(**extra):
    return "/completions", {"prompt": PROMPTS[1], "max_tokens": 12, "temperature": 0, "return_token_ids": True,
                            **extra}


def _chat(**extra):
    return "/chat/completions", {"messages": [{"role": "user", "content": "Hello! How are you today?"}],
                                 "max_tokens": 12, "temperature": 0, **extra}


def _from_greedy(make):
    """A case whose body depends on plain vLLM's greedy answer (to stop on a token or text it really produces)."""
    make.needs_greedy = True
    return make


SEEDED = {"temperature": 1.0, "seed": 7, "max_tokens": 16}
CASES = {
    # structured outputs: the scheduler's grammar bitmask must reach the last node of each route
    "regex": _completion(structured_outputs={"regex": "[0-9]{3}-[a-z]{2,4}"}),
    "choice": _completion(structured_outputs={"choice": ["Paris", "Tokyo", "Rome"]}),
    "grammar": _completion(structured_outputs={"grammar": 'root ::= ("yes" | "no") ", " [a-z]+ "."'}),
    "json_schema": _completion(structured_outputs={"json": PERSON}, max_tokens=40),
    "chat_json_schema": _chat(response_format={"type": "json_schema",
                                               "json_schema": {"name": "person", "schema": PERSON}}, max_tokens=40),
    "chat_json_object": _chat(response_format={"type": "json_object"}, max_tokens=24),
    "tool_choice_required": _chat(tools=TOOLS, tool_choice="required", max_tokens=72),
    "tool_choice_named": _chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                               max_tokens=80),
    "tool_choice_auto": _chat(tools=TOOLS, tool_choice="auto"),
    # logprobs: the prompt rows carry the prompt token's own logprob and rank
    "logprobs": _completion(logprobs=5),
    "echo_logprobs": _completion(echo=True, logprobs=2, max_tokens=4),
    "prompt_logprobs": _completion(prompt_logprobs=3, max_tokens=4),
    "prompt_logprobs_chunked": ("/completions", {"prompt": PROMPTS[4], "prompt_logprobs": 1, "max_tokens": 2,
                                                 "temperature": 0}),  # > 64 tokens: prefilled in chunks
    "logprob_token_ids": _completion(logprobs=1, logprob_token_ids=[10, 20, 30]),
    "chat_logprobs": _chat(logprobs=True, top_logprobs=3),
    "chat_prompt_logprobs": _chat(prompt_logprobs=2, max_tokens=4),
    "responses_logprobs": ("/responses", {"input": "The capital of France is", "max_output_tokens": 8,
                                          "temperature": 0, "top_logprobs": 2,
                                          "include": ["message.output_text.logprobs"]}),
    # the rest of SamplingParams
    "logit_bias": _completion(logit_bias={"100": 8.0, "200": 6.0, "300": -100.0}),
    "allowed_token_ids": _completion(allowed_token_ids=list(range(100, 160))),
    "bad_words": _completion(bad_words=[" the", " count", " stars"]),
    "top_k_top_p_min_p": _completion(**SEEDED, top_k=40, top_p=0.9, min_p=0.05),
    "seed": _completion(**SEEDED),
    "n_seeded": _completion(**SEEDED, n=3),
    "penalties": _completion(presence_penalty=0.8, frequency_penalty=0.5, repetition_penalty=1.3, max_tokens=24),
    "stop_token_ids": _from_greedy(lambda g: _completion(stop_token_ids=[g["token_ids"][5]])),
    "stop_string": _from_greedy(lambda g: _completion(stop=[g["text"][10:14]])),
    "include_stop_str_in_output": _from_greedy(lambda g: _completion(stop=[g["text"][10:14]],
                                                                      include_stop_str_in_output=True)),
    "max_tokens_1": _completion(max_tokens=1),
    "ignore_eos_min_tokens": _completion(ignore_eos=True, min_tokens=20, max_tokens=30),
    "truncate_prompt_tokens": _completion(truncate_prompt_tokens=5),
    "special_tokens_in_text": _completion(skip_special_tokens=False, spaces_between_special_tokens=False),
    "repetition_detection": _completion(repetition_detection={"max_pattern_size": 4, "min_count": 3},
                                        max_tokens=60, ignore_eos=True),
    "beam_search": _completion(use_beam_search=True, n=2, max_tokens=6),
    "streaming_seeded": _completion(**SEEDED, stream=True),
}

# Every SamplingParams field: the CASES entry that checks it, a refusal, or why the nodes never need it.
API_SERVER = "api server: applied by vLLM's own front end or scheduler on the coordinator, never by the nodes"
REFUSED_AT_START = "refused at start-up: the serve flag that enables it is a usage error (vllm_helix/unsupported.py)"
SAMPLING_FIELDS = {
    "n": "n_seeded", "presence_penalty": "penalties", "frequency_penalty": "penalties",
    "repetition_penalty": "penalties", "temperature": "seed", "top_p": "top_k_top_p_min_p",
    "top_k": "top_k_top_p_min_p", "min_p": "top_k_top_p_min_p", "seed": "seed", "stop": "stop_string",
    "stop_token_ids": "stop_token_ids", "ignore_eos": "ignore_eos_min_tokens", "max_tokens": "max_tokens_1",
    "min_tokens": "ignore_eos_min_tokens", "logprobs": "logprobs", "prompt_logprobs": "prompt_logprobs",
    "logprob_token_ids": "logprob_token_ids", "include_stop_str_in_output": "include_stop_str_in_output",
    "skip_special_tokens": "special_tokens_in_text", "spaces_between_special_tokens": "special_tokens_in_text",
    "structured_outputs": "json_schema", "logit_bias": "logit_bias", "allowed_token_ids": "allowed_token_ids",
    "bad_words": "bad_words", "_bad_words_token_ids": "bad_words", "repetition_detection": "repetition_detection",
    "output_kind": "streaming_seeded", "_all_stop_token_ids": "ignore_eos_min_tokens",
    "_eos_token_id": "ignore_eos_min_tokens",
    "thinking_token_budget": "refused: thinking_token_budget",
    "prompt_logprob_token_ids": "refused: prompt_logprob_token_ids",
    "prompt_logprob_start": "refused: prompt_logprob_token_ids",
    "trace_decode_token_ids": REFUSED_AT_START, "watermarking": REFUSED_AT_START,
    "_watermarking_skipped": REFUSED_AT_START, "routed_experts_prompt_start": REFUSED_AT_START,
    "flat_logprobs": API_SERVER, "detokenize": API_SERVER, "stream_interval": API_SERVER,
    "skip_clone": API_SERVER, "output_text_buffer_length": API_SERVER, "extra_args": API_SERVER,
    "skip_reading_prefix_cache": API_SERVER,
}

# Every other field of the completions and chat requests (vLLM's pydantic models), the same way.
MULTIMODAL = "multimodal: multimodal models are refused at engine start; a text-only one refuses the inputs as plain " \
             "vLLM does (test_unsupported_request_features_are_http_400_naming_the_feature)"
REQUEST_FIELDS = {
    "model": "logprobs", "prompt": "logprobs", "messages": "chat_logprobs", "echo": "echo_logprobs",
    "top_logprobs": "chat_logprobs", "response_format": "chat_json_schema", "tools": "tool_choice_named",
    "tool_choice": "tool_choice_named", "use_beam_search": "beam_search", "length_penalty": "beam_search",
    "truncate_prompt_tokens": "truncate_prompt_tokens", "stream": "streaming_seeded",
    "return_token_ids": "regex", "max_completion_tokens": API_SERVER, "stream_options": API_SERVER,
    "add_generation_prompt": API_SERVER, "add_special_tokens": API_SERVER, "chat_template": API_SERVER,
    "chat_template_kwargs": API_SERVER, "continue_final_message": API_SERVER, "documents": API_SERVER,
    "include_reasoning": API_SERVER, "reasoning_effort": API_SERVER, "return_prompt_text": API_SERVER,
    "parallel_tool_calls": API_SERVER, "request_id": API_SERVER, "session_id": API_SERVER, "suffix": API_SERVER,
    "user": API_SERVER, "return_token_offsets": API_SERVER, "return_tokens_as_token_ids": API_SERVER,
    "truncation_side": API_SERVER, "priority": API_SERVER, "vllm_xargs": API_SERVER,
    "cache_salt": API_SERVER,  # salts prefix-cache hashes; Helix runs without a prefix cache
    "prompt_embeds": REFUSED_AT_START, "kv_transfer_params": REFUSED_AT_START, "ec_transfer_params": REFUSED_AT_START,
    "mm_payload": MULTIMODAL, "media_io_kwargs": MULTIMODAL, "mm_processor_kwargs": MULTIMODAL,
    "return_mm_kwargs": MULTIMODAL,
}


@pytest.fixture(scope="module")
def greedy(plain, tiny_llama_path):
    path, body = _completion()
    return post(plain, path, {"model": str(tiny_llama_path), **body})["choices"][0]


def _ask(url: str, path: str, body: dict) -> tuple[int, object]:
    try:
        return 200, post(url, path, body)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read().decode() or "null")


def _joined(chunks: list[dict]) -> dict:
    choices = [c for chunk in chunks for c in chunk["choices"]]
    return {"text": "".join(c["text"] for c in choices), "token_ids": [t for c in choices for t in c["token_ids"]],
            "finish_reasons": [c["finish_reason"] for c in choices if c["finish_reason"]]}


def _same(got, want, where="answer"):
    """Equal JSON, floats to TOLERANCE (relative above 1), ids and timestamps left out."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not an object"
        keys = set(want) - VOLATILE
        assert set(got) - VOLATILE == keys, f"{where}: keys {sorted(set(got) ^ set(want))} differ"
        for key in keys:
            _same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and isinstance(got, int | float):
        assert abs(got - want) <= TOLERANCE * max(1.0, abs(want)), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


# under async scheduling (--helix-async) a request's next step leaves before its token is back: the cases where
# that matters (stops, which leave one step too many in flight; grammars, which wait for the token; samplers that
# read the tokens so far; several sequences; streams)
ASYNC_CASES = ["stop_token_ids", "stop_string", "max_tokens_1", "ignore_eos_min_tokens", "penalties", "n_seeded",
               "logprobs", "prompt_logprobs_chunked", "regex", "chat_json_schema", "tool_choice_required",
               "streaming_seeded"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.engine
@pytest.mark.slow
def test_feature_matches_plain_vllm(case, helix, plain, greedy, tiny_llama_path):
    _check_case(case, helix[0], plain, greedy, tiny_llama_path)


@pytest.mark.parametrize("case", ASYNC_CASES)
@pytest.mark.engine
@pytest.mark.slow
def test_feature_matches_plain_vllm_under_async_scheduling(case, helix_async, plain, greedy, tiny_llama_path):
    _check_case(case, helix_async[0], plain, greedy, tiny_llama_path)


def _check_case(case, url, plain, greedy, tiny_llama_path):
    spec = CASES[case]
    path, body = spec(greedy) if getattr(spec, "needs_greedy", False) else spec
    body = {"model": str(tiny_llama_path), **body}
    want_status, want = _ask(plain, path, body)
    if want_status != 200:
        pytest.skip(f"plain vLLM itself answers {want_status}: {want}")
    got_status, got = _ask(url, path, body)
    assert got_status == 200, got
    if body.get("stream"):  # how tokens are framed into chunks depends on timing; the stream's content does not
        got, want = _joined(got), _joined(want)
    _same(got, want)
    if case == "regex":
        assert re.fullmatch("[0-9]{3}-[a-z]{2,4}", got["choices"][0]["text"])
    if case == "tool_choice_named":
        assert got["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    if case == "tool_choice_required":  # a parsed call, or (cut at max_tokens) the raw call text
        message = got["choices"][0]["message"]
        assert [c["function"]["name"] for c in message.get("tool_calls") or []][:1] == ["get_weather"] or (
            (message["content"] or "").startswith('<tool_call>{"name": "get_weather"'))


def test_every_sampling_parameter_is_accounted_for():
    from vllm import SamplingParams

    from vllm_helix.unsupported import REQUEST_FIELDS

    fields = set(SamplingParams.__struct_fields__)
    assert sorted(fields - set(SAMPLING_FIELDS)) == [], "new SamplingParams fields: add a conformance case or refuse"
    assert sorted(set(SAMPLING_FIELDS) - fields) == [], "fields vLLM no longer has"
    for field, how in SAMPLING_FIELDS.items():
        if how.startswith("refused: "):
            assert how.removeprefix("refused: ") in REQUEST_FIELDS, field
        else:
            assert how in CASES or how in (API_SERVER, REFUSED_AT_START), f"{field}: {how}"


def test_every_request_field_is_accounted_for():
    from vllm import SamplingParams
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    fields = (set(CompletionRequest.model_fields) | set(ChatCompletionRequest.model_fields)) - set(
        SamplingParams.__struct_fields__)
    assert sorted(fields - set(REQUEST_FIELDS)) == [], "new request fields: add a conformance case or refuse"
    assert sorted(set(REQUEST_FIELDS) - fields) == [], "fields vLLM no longer has"
    assert all(how in CASES or how in (API_SERVER, REFUSED_AT_START, MULTIMODAL) for how in REQUEST_FIELDS.values())


@pytest.mark.engine
@pytest.mark.slow
def test_unsupported_request_features_are_http_400_naming_the_feature(helix, plain, tiny_llama_path):
    body = {"model": str(tiny_llama_path), "prompt": PROMPTS[0], "max_tokens": 4, "thinking_token_budget": 8}
    status, answer = _ask(helix[0], "/completions", body)
    assert status == 400, answer
    assert "thinking_token_budget" in answer["error"]["message"]
    assert "not supported with --executor helix" in answer["error"]["message"]
    # what plain vLLM refuses for this model, Helix refuses the same way: a 4xx, never a 500
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    for path, request in (
        ("/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, image]}],
                               "max_tokens": 4}),
        ("/completions", {"model": "some-lora-adapter", "prompt": "hi", "max_tokens": 4}),
        ("/embeddings", {"input": "hi"}),
    ):
        request = {"model": str(tiny_llama_path), **request}
        (want, _), (got, answer) = _ask(plain, path, request), _ask(helix[0], path, request)
        assert 400 <= got < 500 and got == want, (path, answer)


@pytest.mark.slow
def test_unsupported_serve_flags_are_a_usage_error_before_any_engine_starts(tiny_llama_path, tmp_path):
    plan = Path(__file__).resolve().parents[2] / "examples" / "local3.yaml"
    vllm = Path(sys.executable).with_name("vllm")
    proc = subprocess.run([vllm, "serve", str(tiny_llama_path), "--executor", "helix", "--helix-plan", str(plan),
                           *COMMON, "--enable-lora", "--speculative-config", '{"method": "ngram"}'],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--enable-lora True (LoRA adapters) is not supported with --executor helix" in proc.stderr
    assert "(speculative decoding) is not supported with --executor helix" in proc.stderr
