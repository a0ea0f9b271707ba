"""Both endpoints are a `Transport` (the serving path's Channel takes either)."""

from vllm_helix.comm import Endpoint, Transport
from vllm_helix.comm.pyzmq_endpoint import PyzmqEndpoint


def test_both_endpoints_are_transports():
    for cls in (Endpoint, PyzmqEndpoint):
        endpoint = cls("t", "tcp://127.0.0.1:*")
        try:
            assert isinstance(endpoint, Transport), cls
        finally:
            endpoint.close()
