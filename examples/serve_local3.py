"""The README's main job: serve the bundled tiny model across three local Helix nodes, ask it one chat
question through the OpenAI API, print the answer, its route and a few numbers from the run, shut down.

    .venv/bin/python examples/serve_local3.py
"""

import os
import re
import sys
import time
from pathlib import Path

from openai import OpenAI

from vllm_helix.models.tiny import cached_tiny_llama_path, trained_tiny_llama
from vllm_helix.vllm_server import VllmServer

HERE = Path(__file__).resolve().parent
QUESTION = "Hello! How are you today?"
# what to show of `vllm serve`'s log while the cluster comes up: the Helix lines, without vLLM's prefix
START_UP = re.compile(r"\] (Helix: started .*|node \S+ \[\d+, \d+\): .*|Helix cluster up .*)$")


def show_start_up(line: str) -> None:
    if match := START_UP.search(line):
        print("  " + match.group(1), flush=True)


def ask(url: str, model: Path) -> tuple[str, int, float, float]:
    """Stream one greedy chat answer: (text, tokens, seconds to the first token, seconds in all)."""
    client = OpenAI(base_url=url, api_key="unused")
    started, first, pieces, tokens = time.monotonic(), None, [], 0
    stream = client.chat.completions.create(model=str(model), messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=48, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.monotonic()
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    done = time.monotonic()
    return "".join(pieces), tokens, (first or done) - started, done - started


def from_log(server: VllmServer, marker: str, wait_s: float = 0.0) -> str:
    """What follows `marker` on the last log line that has it (waiting up to `wait_s` for one)."""
    deadline = time.monotonic() + wait_s
    while True:
        lines = [line for line in server.log_path.read_text(errors="replace").splitlines() if marker in line]
        if lines or time.monotonic() > deadline:
            return lines[-1].split(marker, 1)[1] if lines else "? (not in the log)"
        time.sleep(0.2)


def main() -> int:
    started = time.monotonic()
    if not (cached_tiny_llama_path() / "config.json").exists():
        print("training the tiny Llama on vllm_helix/models/tiny_corpus.txt (first run only; ~30 CPU-seconds)",
              flush=True)
    model = trained_tiny_llama()
    print(f"model: {model} ({time.monotonic() - started:.0f} s)")
    plan = HERE / "local3.yaml"
    args = ["--executor", "helix", "--helix-plan", str(plan), "--max-model-len", "512"]
    print(f"starting `vllm serve MODEL --executor helix --helix-plan {os.path.relpath(plan)}` (3 local nodes)",
          flush=True)
    server = VllmServer(model, args, on_log_line=show_start_up)
    with server as url:
        print(f"server ready after {time.monotonic() - started:.0f} s\n", flush=True)
        answer, tokens, ttft, seconds = ask(url, model)
        print(f"user:      {QUESTION}\nassistant: {answer}")
        print(f"route:     {from_log(server, 'route ').split(': ', 1)[-1]}\n")
        print(f"{tokens} tokens in {seconds:.2f} s: {tokens / seconds:.1f} tokens/s, "
              f"time to first token {ttft:.2f} s")
        # the coordinator logs it once every node has reported going idle (at most 10 s)
        print(f"node busy share: {from_log(server, 'node busy share since start: ', wait_s=15)}")
    print(f"server stopped (exit status {server.process.returncode}) after {time.monotonic() - started:.0f} s; "
          f"log: {server.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
