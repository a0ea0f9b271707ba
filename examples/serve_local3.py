"""The README's main job: serve the bundled tiny model across three local Helix nodes, ask it one chat
question through the OpenAI API, print the answer, shut down.

    .venv/bin/python examples/serve_local3.py
"""

import sys
from pathlib import Path

from openai import OpenAI

from vllm_helix.models.tiny import build_tiny_llama
from vllm_helix.vllm_server import VllmServer

HERE = Path(__file__).resolve().parent


def main() -> int:
    model = HERE.parent / ".cache" / "tiny-llama"
    if not (model / "config.json").exists():
        build_tiny_llama(model)  # random weights, local tokenizer: deterministic, no model hub
    args = ["--executor", "helix", "--helix-plan", str(HERE / "local3.yaml"), "--max-model-len", "512"]
    print(f"starting `vllm serve {model.name} {' '.join(args)}` (3 local nodes; ~1-2 minutes on a CPU)")
    server = VllmServer(model, args)
    with server as url:
        client = OpenAI(base_url=url, api_key="unused")
        question = "Hello! How are you today?"
        reply = client.chat.completions.create(model=str(model), messages=[{"role": "user", "content": question}],
                                               max_tokens=24, temperature=0)
        print(f"user: {question}\nassistant (random weights, so gibberish is right): "
              f"{reply.choices[0].message.content!r}")
        routes = [line for line in server.log_path.read_text().splitlines() if "route " in line]
        print("its route through the cluster:", routes[-1].split("route ", 1)[1] if routes else "?")
    print(f"server stopped (exit status {server.process.returncode}); log: {server.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
