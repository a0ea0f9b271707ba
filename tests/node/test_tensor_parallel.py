"""A node running vLLM's tensor parallelism (2 rank processes, one core each) in a local chain, against plain vLLM.

The chain is [0, 3) in this process and [3, 8) as a TP-2 node: it takes hidden states from the previous hop,
runs attention and MLP sharded over its two ranks (vLLM's all-reduce), the LM head with an all-gather of the
logits, and samples. One plain-vLLM reference engine (a subprocess) is the only engine start-up.
"""

from dataclasses import replace
from pathlib import Path

import pytest
from greedy_reference import CONFIG, assert_same_tokens_and_logprobs, greedy_chain, plain_vllm_greedy

from vllm_helix.errors import EngineStartError, HelixError

pytestmark = [pytest.mark.engine, pytest.mark.slow]

SEED = 1


@pytest.fixture(scope="module")
def reference(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return plain_vllm_greedy(tiny_llama_path, tmp_path_factory.mktemp("tp-reference"), SEED)


@pytest.fixture(scope="module")
def tp_node(tiny_llama_path: Path):
    from vllm_helix.node.partial_worker import PartialLayerWorker

    node = PartialLayerWorker(str(tiny_llama_path), (3, 8), replace(CONFIG, tensor_parallel_size=2))
    yield node
    node.close()


def test_a_tp2_node_in_a_chain_gives_plain_vllm_tokens_and_logprobs(tiny_llama_path, reference, tp_node):
    from vllm_helix.node.partial_worker import PartialLayerWorker

    first = PartialLayerWorker(str(tiny_llama_path), (0, 3), CONFIG)
    assert_same_tokens_and_logprobs(greedy_chain([first, tp_node], SEED), reference)
    assert tp_node.kv_usage() == 0  # every request's blocks came back


def test_each_rank_holds_half_of_the_kv_heads(tiny_llama_path, tp_node):
    from vllm_helix.node.partial_worker import PartialLayerWorker

    one = PartialLayerWorker(str(tiny_llama_path), (3, 8), CONFIG)
    assert tp_node.tensor_parallel_size == 2 and one.tensor_parallel_size == 1
    # a block of a rank holds 1 of the 2 KV heads: the same per-device budget holds twice the tokens
    assert tp_node.kv_stats().bytes_per_block * 2 == one.kv_stats().bytes_per_block
    assert tp_node.kv_stats().total_blocks >= 2 * one.kv_stats().total_blocks
    assert tp_node.layer_weight_bytes() == one.layer_weight_bytes()  # the same checkpoint tensors, sharded


def test_a_tensor_parallel_size_that_does_not_divide_the_heads_is_one_line_at_start(tiny_llama_path):
    from vllm_helix.node.partial_worker import PartialLayerWorker

    with pytest.raises(EngineStartError, match="divisible by tensor parallel size") as info:
        PartialLayerWorker(str(tiny_llama_path), (0, 8), replace(CONFIG, tensor_parallel_size=3))  # 4 heads
    assert "\n" not in str(info.value)


def test_a_dead_rank_fails_the_step_instead_of_hanging(tiny_llama_path, tp_node):
    """Runs last: it kills the module's TP node."""
    from vllm_helix.node.types import StepItem

    tp_node._ranks._procs[1].kill()
    tp_node.add_request("after-kill", [5, 6, 7])
    import torch

    rows = torch.zeros(3, tp_node.hidden_size)
    with pytest.raises(HelixError, match="tensor-parallel rank 1"):
        tp_node.execute([StepItem("after-kill", 0, 3, [], rows, rows)])
