import pytest
from serve_helpers import COMMON

from vllm_helix.vllm_server import VllmServer


@pytest.fixture(scope="session")
def plain(tiny_llama_path, tmp_path_factory):
    """Plain `vllm serve` of the tiny model: the reference for token equality."""
    with VllmServer(tiny_llama_path, COMMON, log_path=tmp_path_factory.mktemp("plain") / "serve.log") as url:
        yield url
