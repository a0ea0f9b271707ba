"""Messages between the coordinator (HelixExecutor) and the nodes (`vllm-helix worker`).

A message is msgspec-encoded (it rides in the transport header) plus tensor payloads. A `Step` carries the
per-request items of one batch for one node; the hidden states and residuals of all items travel as two
payload tensors, concatenated in item order (rows = tokens). Nodes answer the coordinator with `Tokens` (last range)
or `Failed`; `Hello`/`Start` bring the cluster up; `Free` releases a finished request's KV blocks.
"""

from __future__ import annotations

from typing import Any

import msgspec

from vllm_helix.errors import FrameRejected

PROTOCOL_VERSION = 2  # 2: grammar bitmask rows in Item, prompt logprobs in TokenOut


class NewRequest(msgspec.Struct, frozen=True):
    """Sent with a request's first step on each node of its route."""

    prompt_token_ids: list[int]
    route: list[str]  # node names, first hop first
    sampling: bytes = b""  # msgpack of vllm.SamplingParams (the last node samples)


class Item(msgspec.Struct, frozen=True):
    request_id: str
    start_position: int
    num_tokens: int
    token_ids: list[int] = []  # for the first node: the prompt chunk, or the last sampled token
    new: NewRequest | None = None
    # structured outputs: the scheduler's grammar bitmask row for the token sampled this step (int32 bytes);
    # every hop passes it on, the last node masks the logits with it before sampling
    grammar: bytes = b""


class Step(msgspec.Struct, tag="step", frozen=True):
    step_id: int
    items: list[Item]


class TokenOut(msgspec.Struct, frozen=True):
    request_id: str
    token_id: int | None  # None: a prefill chunk that does not finish the prompt
    logprob_row: tuple[list[int], list[float], int] | None = None  # ids, logprobs, rank of the sampled token
    # prompt_logprobs requests, once their prompt is done: per prompt position 1.., ids and logprobs of
    # [prompt token, top-1, ..., top-k] and the prompt token's rank (vLLM's LogprobsTensors as lists)
    prompt_logprobs: tuple[list[list[int]], list[list[float]], list[int]] | None = None


class Tokens(msgspec.Struct, tag="tokens", frozen=True):
    step_id: int
    results: list[TokenOut]


class Failed(msgspec.Struct, tag="failed", frozen=True):
    step_id: int
    request_ids: list[str]
    node: str
    error: str


class Free(msgspec.Struct, tag="free", frozen=True):
    request_ids: list[str]


class Hello(msgspec.Struct, tag="hello", frozen=True):
    node: str
    layers: list[int]
    kv_tokens: int  # tokens of KV cache this node holds for each of its layers
    kv_block_tokens: int  # it allocates KV in blocks of this many tokens (128 on vLLM's CPU backend)
    hidden_size: int
    dtype: str  # of its weights and activations; must match the server's


class Start(msgspec.Struct, tag="start", frozen=True):
    pass


class Shutdown(msgspec.Struct, tag="shutdown", frozen=True):
    pass


class Envelope(msgspec.Struct, frozen=True):
    version: int
    body: Step | Tokens | Failed | Free | Hello | Start | Shutdown


Message = Step | Tokens | Failed | Free | Hello | Start | Shutdown
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


def encode(message: Message) -> bytes:
    return _encoder.encode(Envelope(PROTOCOL_VERSION, message))


def decode(header: bytes | memoryview) -> Message:
    """Raises FrameRejected for anything that is not a valid message of this protocol version."""
    try:
        envelope = _decoder.decode(header)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise FrameRejected(f"malformed helix message: {exc}") from None
    if envelope.version != PROTOCOL_VERSION:
        raise FrameRejected(f"helix message version {envelope.version}, expected {PROTOCOL_VERSION}")
    return envelope.body


# ------------------------------------------------------------------------- sampling parameters


def encode_sampling(params: Any) -> bytes:
    return msgspec.msgpack.encode(params) if params is not None else b""


def decode_sampling(data: bytes) -> Any:
    if not data:
        return None
    from vllm import SamplingParams

    return msgspec.msgpack.decode(data, type=SamplingParams)
