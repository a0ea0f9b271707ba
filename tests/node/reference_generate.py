"""Whole-model reference: plain vLLM ``LLM.generate`` (run as a subprocess by the tests).

    python reference_generate.py MODEL_DIR SPEC.json OUT.json

SPEC: {"runs": {name: {"prompts": [[ids]], "params": [SamplingParams kwargs per prompt]}},
       "max_num_batched_tokens": 64}. OUT: {name: [{"token_ids": [...], "logprobs": [{id: lp}]}]}.
"""

import json
import sys
from pathlib import Path


def main(model: str, spec_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = json.loads(Path(spec_path).read_text())
    llm = LLM(
        model,
        enforce_eager=True,
        dtype="float32",  # as the partial workers of the tests; bf16 CPU kernels crash on some x86 CPUs
        max_num_batched_tokens=spec["max_num_batched_tokens"],
        max_num_seqs=16,
        max_model_len=1024,
        enable_prefix_caching=False,
        kv_cache_memory_bytes=128 << 20,
        seed=0,
    )
    out = {}
    for name, run in spec["runs"].items():
        prompts = [TokensPrompt(prompt_token_ids=p) for p in run["prompts"]]
        params = [SamplingParams(**kw) for kw in run["params"]]
        results = llm.generate(prompts, params, use_tqdm=False)
        out[name] = [
            {
                "token_ids": list(r.outputs[0].token_ids),
                "logprobs": [
                    {str(t): lp.logprob for t, lp in row.items()} for row in (r.outputs[0].logprobs or [])
                ],
            }
            for r in results
        ]
    Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
