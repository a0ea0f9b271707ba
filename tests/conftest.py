"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest

# Every vLLM process the tests start inherits this: they share the cores, and vLLM's default binding
# pins each of them to the same ones (tests also pin dtype float32 on both the plain and the Helix side).
os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"

pytest_plugins = ["netns_hosts"]  # the make_host fixture (network-namespace hosts)


@pytest.fixture(autouse=True)
def _no_metrics_folder_leak():
    """Parsing `--executor helix` in this process picks a metrics folder and exports it (plugin ->
    metrics.expose); without this, every `vllm serve` a later test starts would share that folder."""
    from vllm_helix.coordinator import metrics

    before = os.environ.get(metrics.ENV)
    yield
    if before is None:
        os.environ.pop(metrics.ENV, None)
    else:
        os.environ[metrics.ENV] = before


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 8-layer Llama (random weights, local tokenizer, head size 64) written once per session."""
    from vllm_helix.models.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
