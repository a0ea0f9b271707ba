"""Plain vLLM's answer to a workload, for the tests that compare a chain of partial-layer workers with it
(tests/node: CPU chains and a tensor-parallel node; tests/gpu: the CUDA path): one reference engine in a
subprocess (tests/node/reference_generate.py), which exits and frees its memory before the workers start."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from vllm_helix.node.config import WorkerConfig

BATCHED = 64  # a small token budget: the long prompts need chunked prefill
# float32 as reference_generate.py (equality is claimed in float32); eager, as the reference
CONFIG = WorkerConfig(kv_cache_bytes=64 << 20, max_num_batched_tokens=BATCHED, max_num_seqs=64, max_model_len=1024,
                      dtype="float32", enforce_eager=True)
PROMPT_LENS = [3, 17, 64, 150, 9, 40, 130]
GREEDY = dict(temperature=0.0, max_tokens=12, logprobs=2)
SCRIPT = Path(__file__).parent / "node" / "reference_generate.py"


def prompts(seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 400) for _ in range(n)] for n in PROMPT_LENS]  # the vocabulary has 466 ids


def plain_vllm(model: Path, folder: Path, runs: dict[str, dict]) -> dict[str, list[dict]]:
    """`runs`: name -> {"prompts": [...], "params": [SamplingParams kwargs, ...]}; the outputs per run."""
    (folder / "spec.json").write_text(json.dumps({"max_num_batched_tokens": BATCHED, "runs": runs}))
    proc = subprocess.run([sys.executable, str(SCRIPT), str(model), str(folder / "spec.json"),
                           str(folder / "out.json")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((folder / "out.json").read_text())


def greedy_chain(workers, seed: int):
    """The greedy workload through a local chain of partial-layer workers."""
    from vllm import SamplingParams

    from vllm_helix.node.local_chain import LocalChain

    return LocalChain(workers).generate(prompts(seed), [SamplingParams(**GREEDY)] * len(PROMPT_LENS),
                                        max_num_batched_tokens=BATCHED)


def assert_same_tokens_and_logprobs(out, reference: list[dict]) -> None:
    assert [g.token_ids for g in out] == [r["token_ids"] for r in reference]
    for got, want in zip(out, reference, strict=True):
        for row, ref_row in zip(got.logprobs, want["logprobs"], strict=True):
            assert {str(t) for t in row} == set(ref_row)
            assert all(abs(row[int(t)] - lp) < 1e-4 for t, lp in ref_row.items())


def plain_vllm_greedy(model: Path, folder: Path, seed: int) -> list[dict]:
    """Plain vLLM's answer to the greedy workload of `seed` (what greedy_chain runs)."""
    runs = {"greedy": {"prompts": prompts(seed), "params": [GREEDY] * len(PROMPT_LENS)}}
    return plain_vllm(model, folder, runs)["greedy"]
