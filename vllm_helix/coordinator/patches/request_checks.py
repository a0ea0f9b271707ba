"""Refuse, per request and with HTTP 400, the SamplingParams fields a Helix cluster cannot carry.

vLLM validates each request's parameters in the API server (`InputProcessor._validate_params`) and answers a
`VLLMValidationError` with 400; the wrapper adds, for a Helix engine only, the fields listed in
`vllm_helix.unsupported.REQUEST_FIELDS`. Without it such a request would run on nodes lacking the engine state it
needs and come back silently different.
"""

from __future__ import annotations

from vllm_helix.options import helix_options

_MARK = "_vllm_helix"


def apply() -> None:
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.input_processor import InputProcessor

    original = InputProcessor._validate_params
    if getattr(original, _MARK, False):
        return

    def _validate_params(self, params, *args, **kwargs):
        if helix_options(self.vllm_config.additional_config)["enabled"]:
            from vllm_helix.unsupported import request_error

            refused = request_error(params)
            if refused is not None:
                raise VLLMValidationError(refused[1], parameter=refused[0])
        return original(self, params, *args, **kwargs)

    setattr(_validate_params, _MARK, True)
    InputProcessor._validate_params = _validate_params
