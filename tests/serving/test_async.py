"""`vllm serve --executor helix --helix-async`: async scheduling across the chain, against plain `vllm serve`.

The shared plan (head [0, 2) -> fast | slow [2, 8)) with the `helix` server's small node KV caches: each request's
next decode step leaves the coordinator before its token is back, and the last node hands the token to `head`.
The request features are checked in test_conformance.py (ASYNC_CASES); here, whole loads.
"""

from __future__ import annotations

import concurrent.futures as cf
import time

import pytest
from serve_helpers import PROMPTS, completion_tokens, kill_mid_burst, post

from vllm_helix.trace import format_summary, read_rows, summarize

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def test_greedy_completions_match_plain_vllm(helix_async, plain, tiny_llama_path):
    ours = completion_tokens(helix_async[0], tiny_llama_path)
    assert ours == completion_tokens(plain, tiny_llama_path)
    assert all(len(t) == 24 for t in ours)


def test_a_burst_with_early_stops_matches_plain_vllm_and_loses_nothing(helix_async, plain, tiny_llama_path):
    """40 concurrent requests of mixed lengths, a third of them stopping early on a token they produce: each stop
    leaves one step in flight that the nodes must drop; the KV caches fill, so requests also queue."""
    def body(i):
        prompt = ("one two three four five six seven " * 12)[: 15 + 23 * (i % 13)]
        return {"model": str(tiny_llama_path), "prompt": prompt, "max_tokens": 4 + i % 29, "temperature": 0,
                "return_token_ids": True}

    def call(url, i, stop=None):
        extra = {"stop_token_ids": [stop]} if stop is not None else {}
        choice = post(url, "/completions", {**body(i), **extra})["choices"][0]
        return choice["token_ids"], choice["finish_reason"]

    with cf.ThreadPoolExecutor(40) as pool:
        want = list(pool.map(lambda i: call(plain, i), range(40)))
    # stop a third of them on their own third token
    stops = {i: want[i][0][2] for i in range(0, 40, 3) if len(want[i][0]) > 3}
    with cf.ThreadPoolExecutor(40) as pool:
        want = list(pool.map(lambda i: call(plain, i, stops.get(i)), range(40)))
        got = list(pool.map(lambda i: call(helix_async[0], i, stops.get(i)), range(40)))
    assert got == want
    assert sum(reason == "stop" for _, reason in got) >= len(stops) // 2


@pytest.mark.kills_a_node
def test_the_trace_tells_a_steps_wait_for_its_token_from_its_hops(helix_async, tiny_llama_path):
    """VLLM_HELIX_TRACE under async scheduling: the first node marks the decode steps that came before their token
    (`held`), and their chains make the async ring, which starts from the last node handing the token over."""
    url, _, trace = helix_async
    since = time.time()
    for prompt in PROMPTS[:3]:  # one at a time: each step crosses one route, head -> fast or head -> slow
        post(url, "/completions", {"model": str(tiny_llama_path), "prompt": prompt, "max_tokens": 12,
                                   "temperature": 0})
    time.sleep(1.5)  # > the idle receive timeouts after which they flush (coordinator 0.2 s, nodes 1 s)
    head = [row for row in read_rows(trace / "head.jsonl") if min(row["arrived"].values()) >= since]
    assert any(row["held"] for row in head), head
    lasts = [row for name in ("fast", "slow") for row in read_rows(trace / f"{name}.jsonl")
             if min(row["arrived"].values()) >= since]
    assert not any(row["held"] for row in lasts)  # a last node waits for no token
    assert all(row["handed"] is not None for row in lasts if row["decodes"])  # a prompt's chunks sample none
    summary = summarize(trace, since=since)
    # every held step the chain carried to the end makes one ring (how many steps are held depends on the host)
    held = {int(step) for row in head for step in row["held"]}
    carried = {int(step) for row in lasts for step in row["sent"]}
    assert summary["ring_steps"] == len(held & carried) > 0, summary
    assert summary["nodes"]["head"]["held"] > 0 and summary["nodes"]["fast"]["held"] == 0
    assert "async ring" in format_summary(summary)


def test_a_node_lost_while_steps_wait_for_its_tokens_costs_no_request(helix_async, tiny_llama_path):
    """Kill `slow` mid-burst: `head` holds steps that wait for the tokens `slow` will never send; its requests are
    recomputed through `fast`, every one completes, and the cluster serves on."""
    url, server, _ = helix_async
    outcomes, why = kill_mid_burst(url, server, tiny_llama_path)
    assert outcomes == ["length"] * 12, "\n".join(why[-20:])
    assert all(len(t) == 24 for t in completion_tokens(url, tiny_llama_path))
    assert "Helix node slow lost" in server.log_path.read_text()
