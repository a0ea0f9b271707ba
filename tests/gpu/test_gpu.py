"""The CUDA path on one GPU: partial-layer workers and a 2-node `vllm serve --executor helix` equal plain vLLM.

    .venv/bin/python -m pytest -m gpu tests/gpu      # a few minutes on one GPU; skipped without CUDA

The same claims as tests/node/test_partial_worker.py and tests/serving, on the platform's CUDA `Worker` /
`GPUModelRunner` instead of the CPU ones (float32, eager, as there). Every node of the plan shares GPU 0.
A TP-2 node needs two GPUs and is skipped on one.
"""

import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vllm_helix.node.config import WorkerConfig

pytestmark = [pytest.mark.gpu, pytest.mark.engine, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BATCHED = 64  # the long prompts need chunked prefill
CONFIG = WorkerConfig(kv_cache_bytes=64 << 20, max_num_batched_tokens=BATCHED, max_num_seqs=64, max_model_len=1024,
                      dtype="float32", enforce_eager=True)
PROMPT_LENS = [3, 17, 64, 150, 9, 40, 130]
GREEDY = dict(temperature=0.0, max_tokens=12, logprobs=2)


def _prompts() -> list[list[int]]:
    rng = random.Random(2)
    return [[rng.randrange(3, 400) for _ in range(n)] for n in PROMPT_LENS]


@pytest.fixture(scope="module")
def reference(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Plain vLLM `LLM.generate` on the GPU, in a subprocess that exits (and frees the GPU) before the workers."""
    tmp = tmp_path_factory.mktemp("gpu-reference")
    spec = {"max_num_batched_tokens": BATCHED,
            "runs": {"greedy": {"prompts": _prompts(), "params": [GREEDY] * len(PROMPT_LENS)}}}
    (tmp / "spec.json").write_text(json.dumps(spec))
    script = Path(__file__).parents[1] / "node" / "reference_generate.py"
    proc = subprocess.run([sys.executable, str(script), str(tiny_llama_path), str(tmp / "spec.json"),
                           str(tmp / "out.json")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp / "out.json").read_text())["greedy"]


def _generate(workers):
    from vllm import SamplingParams

    from vllm_helix.node.local_chain import LocalChain

    return LocalChain(workers).generate(_prompts(), [SamplingParams(**GREEDY)] * len(PROMPT_LENS),
                                        max_num_batched_tokens=BATCHED)


def _assert_equal(out, reference):
    assert [g.token_ids for g in out] == [r["token_ids"] for r in reference]
    for got, want in zip(out, reference, strict=True):
        for row, ref_row in zip(got.logprobs, want["logprobs"], strict=True):
            assert {str(t) for t in row} == set(ref_row)
            assert all(abs(row[int(t)] - lp) < 1e-4 for t, lp in ref_row.items())


def test_partial_workers_on_the_gpu_equal_plain_vllm(tiny_llama_path, reference):
    from vllm_helix.node.partial_worker import PartialLayerWorker

    workers = [PartialLayerWorker(str(tiny_llama_path), r, CONFIG) for r in [(0, 1), (1, 5), (5, 8)]]
    assert all(w.dtype == "float32" for w in workers)
    _assert_equal(_generate(workers), reference)
    assert all(w.kv_usage() == 0 for w in workers)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="a TP-2 node needs two GPUs")
def test_a_tp2_node_over_two_gpus_equals_plain_vllm(tiny_llama_path, reference):
    from vllm_helix.node.partial_worker import PartialLayerWorker

    first = PartialLayerWorker(str(tiny_llama_path), (0, 3), CONFIG)
    tp = PartialLayerWorker(str(tiny_llama_path), (3, 8), replace(CONFIG, tensor_parallel_size=2))
    try:
        _assert_equal(_generate([first, tp]), reference)
    finally:
        tp.close()


def test_more_tensor_parallelism_than_gpus_is_one_line_at_start(tiny_llama_path):
    from vllm_helix.errors import EngineStartError
    from vllm_helix.node.partial_worker import PartialLayerWorker

    too_many = torch.cuda.device_count() * 2  # 2 or 4 divide the tiny model's 4 heads on 1 or 2 GPUs
    with pytest.raises(EngineStartError, match=f"tensor parallel size {too_many} needs {too_many} GPUs"):
        PartialLayerWorker(str(tiny_llama_path), (0, 8), replace(CONFIG, tensor_parallel_size=too_many))


def test_a_two_node_helix_serve_on_one_gpu_equals_plain_vllm_serve(tiny_llama_path, tmp_path):
    from serve_helpers import COMMON, completion_tokens, write_plan

    from vllm_helix.vllm_server import VllmServer

    # one at a time: the plain server's KV cache would otherwise hold the GPU memory the nodes need
    with VllmServer(tiny_llama_path, [*COMMON, "--gpu-memory-utilization", "0.3"],
                    log_path=tmp_path / "plain.log") as url:
        want = completion_tokens(url, tiny_llama_path)
    cluster = {"name": "one-gpu", "coordinator": {"address": "local"},
               "nodes": [{"name": n, "gpu": "H100", "vram": "80GB", "address": "local"} for n in ("a", "b")],
               "default_link": {"bandwidth": "10Gbps", "latency": "0.1ms"}}
    plan = write_plan(tmp_path, tiny_llama_path, cluster, {"a": [0, 3], "b": [3, 8]})
    with VllmServer(tiny_llama_path, ["--executor", "helix", "--helix-plan", str(plan),
                                      "--helix-kv-cache-bytes", str(64 << 20), *COMMON],
                    log_path=tmp_path / "helix.log") as url:
        assert completion_tokens(url, tiny_llama_path) == want
