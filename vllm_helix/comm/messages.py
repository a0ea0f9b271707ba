"""Message header (msgspec) and helpers to view payloads as numpy arrays / torch tensors without copies.

A message on the wire is one small header plus zero or more payload buffers (design.md §6). The header
is generic on purpose: other layers (the executor) define their own `kind` strings and `meta` keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from ..errors import FrameRejected

HEADER_VERSION = 1


class TensorSpec(msgspec.Struct, array_like=True, frozen=True):
    """dtype name (numpy or torch spelling, e.g. "float32", "bfloat16") and shape of one payload."""

    dtype: str
    shape: tuple[int, ...]


class Header(msgspec.Struct, array_like=True, frozen=True):
    """Versioned header of every message; array-encoded msgpack (a few dozen bytes)."""

    kind: str
    version: int = HEADER_VERSION
    request_ids: tuple[str, ...] = ()
    route: tuple[str, ...] = ()
    tensors: tuple[TensorSpec, ...] = ()
    meta: dict[str, Any] = {}


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Header)


def encode_header(header: Header) -> bytes:
    return _encoder.encode(header)


def typed_decoder(header_type: type[Header] | None) -> msgspec.msgpack.Decoder | None:
    """A decoder for a Header subclass whose `meta` is a layer's own message type (see decode_header)."""
    return None if header_type is None else msgspec.msgpack.Decoder(header_type)


def decode_header(data: bytes, sender: str | None = None, typed: msgspec.msgpack.Decoder | None = None) -> Header:
    """Header from wire bytes; FrameRejected when malformed or of another version.

    With `typed` (typed_decoder), `meta` is decoded straight into that layer's message struct, in one pass
    instead of into dicts that the layer converts again; a header that does not fit it is decoded generically,
    so the layer still sees (and names) what is wrong with it."""
    if typed is not None:
        try:
            header = typed.decode(data)
        except Exception:  # noqa: BLE001 - not that layer's shape: the generic decode below reports it
            header = None
        if header is not None and header.version == HEADER_VERSION:
            return header
    try:
        header = _decoder.decode(data)
    except Exception as e:  # msgspec also lets UnicodeDecodeError & co. through on hostile bytes (fuzz-found)
        err = FrameRejected(f"malformed message header from {sender!r}: {e}")
        err.peer = sender
        raise err from None
    if header.version != HEADER_VERSION:
        err = FrameRejected(f"header version {header.version} from {sender!r}; this build speaks {HEADER_VERSION}")
        err.peer = sender
        raise err
    return header


@dataclass(slots=True)
class Message:
    """A received message. `payloads` are zero-copy buffers (valid as long as they are referenced)."""

    sender: str
    header: Header
    payloads: list[Any] = field(default_factory=list)
    received_at: float = 0.0  # wall clock (time.time()) when the transport took it off the socket

    def array(self, i: int) -> np.ndarray:
        """Payload i as a numpy array shaped by header.tensors[i] (no copy)."""
        spec = self.header.tensors[i]
        return np.frombuffer(self.payloads[i], dtype=np.dtype(spec.dtype)).reshape(spec.shape)

    def tensor(self, i: int) -> Any:
        """Payload i as a torch tensor shaped by header.tensors[i] (no copy; bfloat16 included)."""
        import torch

        spec = self.header.tensors[i]
        as_numpy = _numpy_dtype(spec.dtype)
        if as_numpy is not None:  # numpy builds the view, torch wraps it: one torch call instead of three (~15 us
            return torch.from_numpy(np.frombuffer(self.payloads[i], dtype=as_numpy).reshape(spec.shape))  # each cold)
        dtype = getattr(torch, spec.dtype)
        return torch.frombuffer(self.payloads[i], dtype=torch.uint8).view(dtype).reshape(spec.shape)


def as_buffer(x: Any) -> Any:
    """Any C-contiguous CPU tensor/array/bytes-like as an object with the buffer protocol, without copying."""
    if type(x).__module__.startswith("torch"):
        if not x.is_cpu:
            raise ValueError(f"tensor on {x.device}: the transport sends CPU memory; call .cpu() first")
        if not x.is_contiguous():
            raise ValueError("tensor is not contiguous: call .contiguous() first (sending never copies)")
        if not x.requires_grad and _numpy_dtype(str(x.dtype).removeprefix("torch.")) is not None:
            return x.numpy()  # one torch call; a send right after a forward pays ~10 us for each
        return x.detach().reshape(-1).view(_torch_u8()).numpy()
    flags = getattr(x, "flags", None)
    if flags is not None and not flags.c_contiguous:
        raise ValueError("array is not C-contiguous: use np.ascontiguousarray first (sending never copies)")
    return x


def tensor_spec(x: Any) -> TensorSpec:
    """TensorSpec of a numpy array or torch tensor."""
    return TensorSpec(str(x.dtype).removeprefix("torch."), tuple(x.shape))


_NUMPY_DTYPES: dict[str, np.dtype | None] = {}


def _numpy_dtype(name: str) -> np.dtype | None:
    """numpy's dtype of this name; None where numpy has none (bfloat16, the float8 types)."""
    if name not in _NUMPY_DTYPES:
        try:
            _NUMPY_DTYPES[name] = np.dtype(name)
        except TypeError:
            _NUMPY_DTYPES[name] = None
    return _NUMPY_DTYPES[name]


def _torch_u8() -> Any:
    import torch

    return torch.uint8
