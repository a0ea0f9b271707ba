"""Data plane between the coordinator and partial-layer workers (design.md §6, docs/transport.md).

`Endpoint` is the C++ ZeroMQ transport; `PyzmqEndpoint` is the same interface on pyzmq (benchmark baseline).
"""

from .endpoint import CurveKeys, Endpoint, EndpointOptions
from .messages import HEADER_VERSION, Header, Message, TensorSpec, tensor_spec

__all__ = [
    "HEADER_VERSION",
    "CurveKeys",
    "Endpoint",
    "EndpointOptions",
    "Header",
    "Message",
    "TensorSpec",
    "tensor_spec",
]
