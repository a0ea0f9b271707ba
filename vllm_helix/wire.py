"""The wire protocol between the coordinator (HelixExecutor, in `vllm serve`) and the nodes (`vllm-helix worker`).

Both processes import this one module: the messages, how they ride the transport, and `Channel`, the
serving path's view of an endpoint (Helix messages to named peers, from any peer).

A message is the transport header's `meta` (msgspec structs as msgpack, one encoding for the whole
header) with `kind` = "helix/<version>", plus tensor payloads (zero-copy both ways). A `Step` carries the
per-request items of one batch for one node; the residual stream of all items travels as payload tensors,
concatenated in item order (rows = tokens): one, the summed stream, in float32; two, hidden states and
residuals, in 16-bit dtypes (`vllm_helix/node/partial_worker.py` says why). Nodes answer the coordinator
with `Tokens` (last range) or `Failed`; under async scheduling the last range also hands its tokens straight to
the first range (`Sampled`); `Hello`/`Start` bring the cluster up (`Progress` reports each
start-up phase on the way; `Calibrate` asks a node for its start-up probe, which its next `Hello` carries);
`Free` releases a finished request's KV blocks; `Busy` reports a node's compute time. Elastic serving:
`HopLost` (a node could not reach its next hop), `Reset` (the coordinator took a node out of routing: forget
everything, say Hello again), `Drain` (a worker asked to stop: hand back what it holds).
`VLLM_HELIX_TRANSPORT=pyzmq` swaps the C++ endpoint for the pyzmq one (same interface), for comparisons.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

import msgspec

from vllm_helix.comm import CurveKeys, Endpoint, Header, Transport, tensor_spec
from vllm_helix.errors import ConfigError, FrameRejected, TransportTimeout

if TYPE_CHECKING:
    import torch
    from vllm import SamplingParams

PROTOCOL_VERSION = 3  # 2: grammar bitmask rows in Item, prompt logprobs in TokenOut; 3: Sampled (async scheduling)
KIND = f"helix/{PROTOCOL_VERSION}"
LogprobRow = tuple[list[int], list[float], int]  # ids, logprobs, rank of the sampled token
# per prompt position 1..: ids and logprobs of [prompt token, top-1, ..., top-k], and the prompt token's rank
PromptLogprobRows = tuple[list[list[int]], list[list[float]], list[int]]
COORDINATOR_PEER = "coordinator"  # the coordinator's name on the transport
DENIED_CHECK_S = 1.0  # how often recv() looks for peers refused at the CURVE handshake
logger = logging.getLogger(__name__)


class NewRequest(msgspec.Struct, frozen=True):
    """Sent with a request's first step on each node of its route."""

    prompt_token_ids: list[int]
    route: list[str]  # node names, first hop first
    sampling: bytes = b""  # msgpack of vllm.SamplingParams (the last node samples)
    # async scheduling (--helix-async): the last node sends each token it samples straight to the first node,
    # which holds the request's next step, sent before that token was known, until it comes
    sampled_to_first: bool = False


class Item(msgspec.Struct, frozen=True):
    request_id: str
    start_position: int
    num_tokens: int
    # for the first node: the last sampled token of a decode step; none on a decode step sent before that token
    # was known (async scheduling: the first node waits for the last node's Sampled)
    token_ids: list[int] = []
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
    logprob_row: LogprobRow | None = None
    # prompt_logprobs requests, once their prompt is done (vLLM's LogprobsTensors as lists)
    prompt_logprobs: PromptLogprobRows | None = None


class Tokens(msgspec.Struct, tag="tokens", frozen=True):
    step_id: int
    results: list[TokenOut]


class Sampled(msgspec.Struct, tag="sampled", frozen=True):
    """Last node -> first node of the same routes (async scheduling): the tokens it just sampled, each with its
    position, which the request's next decode step starts at."""

    tokens: list[tuple[str, int, int]]  # (request id, position, token id)


class Failed(msgspec.Struct, tag="failed", frozen=True):
    step_id: int
    request_ids: list[str]
    node: str
    error: str


class Free(msgspec.Struct, tag="free", frozen=True):
    request_ids: list[str]


class Calibration(msgspec.Struct, frozen=True):
    """What a node's start-up probe took: one prefill chunk and one decode step of the same shapes on every
    node, so the coordinator can compare each node's real speed with its plan before the first request."""

    prefill_tokens: int
    prefill_s: float
    decode_seqs: int
    decode_context: int  # tokens cached per sequence at the decode step
    decode_s: float


class Hello(msgspec.Struct, tag="hello", frozen=True):
    node: str
    layers: list[int]
    kv_tokens: int  # tokens of KV cache this node holds for each of its layers
    kv_block_tokens: int  # it allocates KV in blocks of this many tokens (128 on vLLM's CPU backend)
    hidden_size: int
    dtype: str  # of its weights and activations; must match the server's
    calibration: Calibration | None = None  # its start-up probe (None: not run, or its limits could not hold one)
    probed: bool = False  # it ran the probe the coordinator asked for (Calibrate)


class Progress(msgspec.Struct, tag="progress", frozen=True):
    """A node entered a start-up phase: loading, compiling, warming up, calibrating, ready."""

    node: str
    layers: list[int]
    phase: str
    elapsed_s: float  # since the node's process started

    def line(self) -> str:
        """The same line in the node's log and in the coordinator's (`vllm serve`'s)."""
        return f"node {self.node} [{self.layers[0]}, {self.layers[1]}): {self.phase:<11} {self.elapsed_s:6.1f} s"


class Busy(msgspec.Struct, tag="busy", frozen=True):
    """A node's compute since it started serving: sent every report interval and when it goes idle.
    Counts are cumulative; the coordinator turns them into rates and metrics (coordinator/metrics.py)."""

    node: str
    busy_s: float  # seconds spent running batches
    batches: int
    tokens: int
    idle: bool  # no request is routed through the node now
    decode_seqs: int = 0  # of `tokens`, those that were one-token decode steps (the rest prefill chunks)
    kv_used_blocks: int = 0  # the node's paged KV cache now
    kv_total_blocks: int = 0
    bytes_sent: int = 0  # activation payload bytes through its channel
    bytes_received: int = 0


class Start(msgspec.Struct, tag="start", frozen=True):
    public_keys: dict[str, str] = {}  # encrypted clusters: the coordinator's plan's keys, which nodes trust


class Calibrate(msgspec.Struct, tag="calibrate", frozen=True):
    """Run the start-up probe now and say Hello with it. At start the coordinator asks every node at once, once all
    are up, so nodes that share a host probe under the same load (one probed while another loaded its model
    would look faster than it is)."""


class Shutdown(msgspec.Struct, tag="shutdown", frozen=True):
    pass


class HopLost(msgspec.Struct, tag="hop_lost", frozen=True):
    """`node` could not pass these requests' step on to `peer`: the coordinator reroutes them."""

    step_id: int
    request_ids: list[str]
    node: str
    peer: str
    error: str


class Reset(msgspec.Struct, tag="reset", frozen=True):
    """The coordinator took the node out of routing (it counted it as lost): free every request, say Hello again."""

    reason: str


class Drain(msgspec.Struct, tag="drain", frozen=True):
    """The node is stopping (SIGTERM): route nothing new through it, take back what it holds, then Shutdown."""

    node: str


Message = (Step | Tokens | Sampled | Failed | Free | Hello | Progress | Busy | Start | Calibrate | Shutdown | HopLost
           | Reset | Drain)
_MESSAGE_TYPES = get_args(Message)


class HelixHeader(Header, frozen=True, array_like=True):
    """The transport header as a channel decodes it: `meta` straight into a Message (one msgpack pass; decoding
    into dicts and converting those cost a node ~15 us per Step of 15 requests, several times that right after
    a forward). A header that is not one (another version, garbage) falls back to the generic Header."""

    meta: Message | None = None  # type: ignore[assignment]


def encode(message: Message, tensors: Sequence[torch.Tensor] = ()) -> Header:
    """The transport header of `message` with these payload tensors."""
    # the struct itself as meta: msgspec encodes it as the same map to_builtins would build, in one pass
    return Header(kind=KIND, tensors=tuple(tensor_spec(t) for t in tensors), meta=message)  # type: ignore[arg-type]


def decode(header: Header) -> Message:
    """Raises FrameRejected for anything that is not a valid message of this protocol version."""
    if header.kind != KIND:
        if header.kind.startswith("helix/"):
            raise FrameRejected(f"helix message version {header.kind.removeprefix('helix/')}, "
                                f"expected {PROTOCOL_VERSION}")
        raise FrameRejected(f"not a helix message: kind {header.kind!r}")
    if isinstance(header.meta, _MESSAGE_TYPES):  # a HelixHeader: decoded and checked already
        return header.meta
    try:
        return msgspec.convert(header.meta, Message)
    except msgspec.ValidationError as exc:
        raise FrameRejected(f"malformed helix message: {exc}") from None


# ------------------------------------------------------------------------- sampling parameters


def encode_sampling(params: SamplingParams | None) -> bytes:
    return msgspec.msgpack.encode(params) if params is not None else b""


def decode_sampling(data: bytes) -> SamplingParams | None:
    if not data:
        return None
    from vllm import SamplingParams

    return msgspec.msgpack.decode(data, type=SamplingParams)


# ------------------------------------------------------------------------- the channel


@dataclass(slots=True)
class Received:
    peer: str
    message: Message
    tensors: list[torch.Tensor]  # viewing the received buffers
    at: float = 0.0  # wall clock when the transport received it (hot-path tracing)
    held_at: float | None = None  # async: it came at held_at and waited for its token, which came at `at`


def tcp(address: str) -> str:
    return address if "://" in address else f"tcp://{address}"


class Channel:
    """Helix messages to named peers, from any peer, over a Transport (CURVE-encrypted when opened with keys)."""

    def __init__(self, endpoint: Transport, curve: Endpoint | None = None):
        self.endpoint = endpoint
        self._curve = curve  # the same endpoint, when its links are CURVE: allow-list and refused peers
        self._denied_checked = time.monotonic()
        self.payload_bytes_sent = self.payload_bytes_received = 0

    @property
    def encrypted(self) -> bool:
        return self._curve is not None

    def connect(self, peer: str, address: str, public_key: str | None = None) -> None:
        """Dial `peer`; on an encrypted channel, `public_key` is the key it must prove it holds."""
        self.endpoint.connect(peer, tcp(address), public_key if self._curve else None)

    def rekey(self, peer: str, public_key: str) -> None:
        """`peer` now holds the key `public_key` (rotated): dial it again, expecting that key."""
        if self._curve:
            self._curve.rekey(peer, public_key)

    def redial_if_lost(self, peer: str) -> bool:
        """`peer` spoke to us: if our link to it says lost, dial it again on a fresh socket (and say so)."""
        if self.endpoint.peers().get(peer) != "lost":
            return False
        self.endpoint.redial(peer)
        return True

    def allow(self, public_keys: Sequence[str]) -> None:
        """Accept connections from these keys only (encrypted channels)."""
        if self._curve:
            self._curve.set_allowed(public_keys)

    def peers(self) -> set[str]:
        return set(self.endpoint.peers())

    def send(self, peer: str, message: Message, tensors: Sequence[torch.Tensor] = ()) -> None:
        """Raises PeerLost (peer gone) or TransportTimeout (its queue stayed full)."""
        self.endpoint.send(peer, encode(message, tensors), list(tensors), timeout=30.0)
        self.payload_bytes_sent += sum(t.nbytes for t in tensors)  # for the Busy report's metrics

    def recv(self, timeout_s: float) -> Received | None:
        """Next message, or None after `timeout_s`. Raises PeerLost, FrameRejected (that message only)."""
        if self._curve and time.monotonic() - self._denied_checked > DENIED_CHECK_S:
            self._log_denied(self._curve)
        try:
            raw = self.endpoint.recv(timeout_s)
        except TransportTimeout:
            return None
        message = decode(raw.header)
        try:
            tensors = [raw.tensor(i) for i in range(len(raw.header.tensors))]
        except (IndexError, ValueError, TypeError, AttributeError, RuntimeError) as exc:  # numpy's, torch's
            raise FrameRejected(f"a message from {raw.sender!r} with payloads unlike its header's: {exc}") from None
        received = Received(raw.sender, message, tensors, raw.received_at or time.time())
        self.payload_bytes_received += sum(t.nbytes for t in received.tensors)  # for the Busy report's metrics
        return received

    def _log_denied(self, curve: Endpoint) -> None:
        self._denied_checked = time.monotonic()
        for address, key in curve.take_denied():  # the transport reports each address once
            logger.warning("%s: refused a connection from %s: its CURVE key %s is not one this node accepts",
                           curve.name, address, key[:8] + "..." if key else "(none)")

    def close(self) -> None:
        self.endpoint.close()


def open_channel(name: str, bind: str, curve: CurveKeys | None = None) -> Channel:
    """Bind `name`'s endpoint; with `curve` (CurveKeys with an allow-list) every link is CURVE."""
    if os.environ.get("VLLM_HELIX_TRANSPORT") == "pyzmq":
        if curve is not None:
            raise ConfigError("VLLM_HELIX_TRANSPORT=pyzmq has no CURVE encryption: unset it, or use --helix-insecure")
        from vllm_helix.comm.pyzmq_endpoint import PyzmqEndpoint

        return Channel(PyzmqEndpoint(name, tcp(bind), header_type=HelixHeader))
    endpoint = Endpoint(name, tcp(bind), curve=curve, header_type=HelixHeader)
    return Channel(endpoint, endpoint if curve is not None else None)
