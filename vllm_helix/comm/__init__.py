"""Data plane between the coordinator and partial-layer workers (design.md §6, docs/transport.md).

`Endpoint` is the C++ ZeroMQ transport; `PyzmqEndpoint` is the same interface on pyzmq (benchmark baseline);
`Transport` is that interface as a typing.Protocol.
"""

from .endpoint import CurveKeys, Endpoint, EndpointOptions
from .messages import HEADER_VERSION, Header, Message, TensorSpec, tensor_spec
from .transport import Transport

__all__ = [
    "HEADER_VERSION",
    "CurveKeys",
    "Endpoint",
    "EndpointOptions",
    "Header",
    "Message",
    "TensorSpec",
    "Transport",
    "tensor_spec",
]
