"""The CUDA path on one GPU: partial-layer workers and a 2-node `vllm serve --executor helix` equal plain vLLM.

    .venv/bin/python -m pytest -m gpu tests/gpu      # a few minutes on one GPU; skipped without CUDA

The same claims as tests/node/test_partial_worker.py and tests/serving, on the platform's CUDA `Worker` /
`GPUModelRunner` instead of the CPU ones (float32, eager, as there). Every node of the plan shares GPU 0.
A TP-2 node needs two GPUs and is skipped on one.
"""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from greedy_reference import CONFIG, assert_same_tokens_and_logprobs, greedy_chain, plain_vllm_greedy

pytestmark = [pytest.mark.gpu, pytest.mark.engine, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SEED = 2


@pytest.fixture(scope="module")
def reference(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return plain_vllm_greedy(tiny_llama_path, tmp_path_factory.mktemp("gpu-reference"), SEED)


def test_partial_workers_on_the_gpu_equal_plain_vllm(tiny_llama_path, reference):
    from vllm_helix.node.partial_worker import PartialLayerWorker

    workers = [PartialLayerWorker(str(tiny_llama_path), r, CONFIG) for r in [(0, 1), (1, 5), (5, 8)]]
    assert all(w.dtype == "float32" for w in workers)
    assert_same_tokens_and_logprobs(greedy_chain(workers, SEED), reference)
    assert all(w.kv_usage() == 0 for w in workers)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="a TP-2 node needs two GPUs")
def test_a_tp2_node_over_two_gpus_equals_plain_vllm(tiny_llama_path, reference):
    from vllm_helix.node.partial_worker import PartialLayerWorker

    first = PartialLayerWorker(str(tiny_llama_path), (0, 3), CONFIG)
    tp = PartialLayerWorker(str(tiny_llama_path), (3, 8), replace(CONFIG, tensor_parallel_size=2))
    try:
        assert_same_tokens_and_logprobs(greedy_chain([first, tp], SEED), reference)
    finally:
        tp.close()


def test_more_tensor_parallelism_than_gpus_is_one_line_at_start(tiny_llama_path):
    from vllm_helix.errors import EngineStartError
    from vllm_helix.node.partial_worker import PartialLayerWorker

    too_many = torch.cuda.device_count() * 2  # 2 or 4 divide the tiny model's 4 heads on 1 or 2 GPUs
    with pytest.raises(EngineStartError, match=f"tensor parallel size {too_many} needs {too_many} GPUs"):
        PartialLayerWorker(str(tiny_llama_path), (0, 8), replace(CONFIG, tensor_parallel_size=too_many))


EAGER = ["--enforce-eager"]  # both servers alike; vLLM's torch.compile and CUDA graphs would triple the start-up


def test_a_two_node_helix_serve_on_one_gpu_equals_plain_vllm_serve(tiny_llama_path, tmp_path):
    from serve_helpers import COMMON, completion_tokens, write_plan

    from vllm_helix.vllm_server import VllmServer

    # one at a time: the plain server's KV cache would otherwise hold the GPU memory the nodes need
    with VllmServer(tiny_llama_path, [*COMMON, *EAGER, "--gpu-memory-utilization", "0.3"],
                    log_path=tmp_path / "plain.log") as url:
        want = completion_tokens(url, tiny_llama_path)
    cluster = {"name": "one-gpu", "coordinator": {"address": "local"},
               "nodes": [{"name": n, "gpu": "H100", "vram": "80GB", "address": "local"} for n in ("a", "b")],
               "default_link": {"bandwidth": "10Gbps", "latency": "0.1ms"}}
    plan = write_plan(tmp_path, tiny_llama_path, cluster, {"a": [0, 3], "b": [3, 8]})
    with VllmServer(tiny_llama_path, ["--executor", "helix", "--helix-plan", str(plan),
                                      "--helix-kv-cache-bytes", str(64 << 20), *COMMON, *EAGER],
                    log_path=tmp_path / "helix.log") as url:
        assert completion_tokens(url, tiny_llama_path) == want
