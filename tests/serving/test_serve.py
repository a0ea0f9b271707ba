"""`vllm serve MODEL --executor helix` end to end: a real 3-node local cluster vs plain `vllm serve`.

The Helix plan branches: node `head` [0, 2) feeds `fast` and `slow` (both [2, 8)), whose max-flow arc
flows are 2:1 — so routes can be checked against the plan. Both servers chunk prefills at 64 tokens.
Node KV caches are made small (--helix-kv-cache-bytes, the same on every host) so that a burst of requests
must queue for KV room.
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml
from serve_helpers import CLUSTER, COMMON, PROMPTS, completion_tokens, kill_mid_burst, post, write_plan

from vllm_helix.errors import HelixError
from vllm_helix.vllm_server import VllmServer

pytestmark = [pytest.mark.engine, pytest.mark.slow]

ROUTE = re.compile(r"^route \S+: coordinator -> head \[0, 2\) -> (fast|slow) \[2, 8\) -> coordinator$")


def test_greedy_completions_match_plain_vllm(helix, plain, tiny_llama_path):
    ours = completion_tokens(helix[0], tiny_llama_path)
    assert ours == completion_tokens(plain, tiny_llama_path)
    assert all(len(t) == 24 for t in ours)


def test_streaming_completion_and_chat_match_plain_vllm(helix, plain, tiny_llama_path):
    def stream_text(url, path, body):
        chunks = post(url, path, {**body, "stream": True})
        return "".join((c["choices"][0].get("text") or c["choices"][0].get("delta", {}).get("content") or "")
                       for c in chunks if c.get("choices"))

    completion = {"model": str(tiny_llama_path), "prompt": PROMPTS[1], "max_tokens": 20, "temperature": 0}
    chat = {"model": str(tiny_llama_path), "messages": [{"role": "user", "content": "Hello! How are you today?"}],
            "max_tokens": 20, "temperature": 0}
    for path, body in (("/completions", completion), ("/chat/completions", chat)):
        assert stream_text(helix[0], path, body) == stream_text(plain, path, body)
    assert (post(helix[0], "/chat/completions", chat)["choices"][0]["message"]
            == post(plain, "/chat/completions", chat)["choices"][0]["message"])


def test_logprobs_match_plain_vllm(helix, plain, tiny_llama_path):
    body = {"model": str(tiny_llama_path), "prompt": PROMPTS[:3], "max_tokens": 8, "temperature": 0, "logprobs": 3}

    def top(url):
        choices = sorted(post(url, "/completions", body)["choices"], key=lambda c: c["index"])
        return [(c["logprobs"]["tokens"], c["logprobs"]["top_logprobs"]) for c in choices]

    for (tokens, tops), (want_tokens, want_tops) in zip(top(helix[0]), top(plain), strict=True):
        assert tokens == want_tokens
        for got, want in zip(tops, want_tops, strict=True):
            assert got.keys() == want.keys()
            assert all(abs(got[t] - want[t]) < 1e-3 for t in want)


def test_burst_of_mixed_requests_all_complete_while_kv_is_full(helix, tiny_llama_path):
    """40 concurrent requests: node KV admits only some at once; the rest queue (none is dropped)."""
    url = helix[0]
    waiting, done = [], threading.Event()

    def watch():
        while not done.is_set():
            with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10) as response:
                text = response.read().decode()
            waiting.append(float(re.search(r"^vllm:num_requests_waiting\{[^}]*\} (\S+)", text, re.M).group(1)))
            time.sleep(0.2)

    def call(i):
        prompt = ("one two three four five six seven " * 12)[: 15 + 23 * (i % 13)]
        out = post(url, "/completions", {"model": str(tiny_llama_path), "prompt": prompt,
                                         "max_tokens": 4 + i % 29, "temperature": 0})
        return out["choices"][0]["finish_reason"], out["usage"]["completion_tokens"] == 4 + i % 29

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with cf.ThreadPoolExecutor(40) as pool:
            results = list(pool.map(call, range(40)))
    finally:
        done.set()
        watcher.join()
    assert results == [("length", True)] * 40
    assert max(waiting) > 0, "the burst should have exceeded the nodes' KV room and queued"
    assert all(ROUTE.match(line) for line in helix[1].read_text().splitlines())  # every route, the burst's too


@pytest.mark.fresh_router
def test_routes_are_logged_and_follow_the_plan_flows(helix, tiny_llama_path):
    url, log, _ = helix
    # waves small enough that KV room never decides the route: the split is the router's alone. The router
    # (IWRR) splits prompt tokens, not requests, over its whole history: after other tests' long prompts it
    # evens out their load first, hence fresh_router (this runs before any other test of the server)
    before = len(log.read_text().splitlines()) if log.exists() else 0  # the first route creates the log
    with cf.ThreadPoolExecutor(6) as pool:
        for _ in range(4):
            list(pool.map(lambda i: post(url, "/completions", {"model": str(tiny_llama_path), "prompt": f"{i} + 1 =",
                                                                "max_tokens": 2, "temperature": 0}), range(6)))
    chosen = [ROUTE.match(line).group(1) for line in log.read_text().splitlines()[before:]]
    assert len(chosen) == 24
    share_fast = chosen.count("fast") / len(chosen)
    assert 0.55 < share_fast < 0.8, f"arc flows are 2:1, routes went {share_fast:.0%} through fast"


def test_over_long_prompt_is_http_400(helix, tiny_llama_path):
    body = {"model": str(tiny_llama_path), "prompt": "word " * 600, "max_tokens": 5}
    with pytest.raises(urllib.error.HTTPError) as info:
        post(helix[0], "/completions", body)
    assert info.value.code == 400


def test_prefix_caching_is_turned_off_and_says_so(helix, tiny_llama_path):
    """vLLM turns prefix caching on by default; under Helix it would skip prompt tokens the nodes never saw."""
    prompt = "The same long system prompt for every request. " * 8
    first, again = (completion_tokens(helix[0], tiny_llama_path, prompt=[prompt]) for _ in range(2))
    assert first == again  # a repeated prompt is computed again, in full, and gives the same tokens
    assert "prefix caching is off under --executor helix" in helix[2].log_path.read_text()


@pytest.mark.kills_a_node
def test_a_lost_node_costs_no_request_and_the_rest_go_on(helix, tiny_llama_path):
    """Kill `slow` mid-burst: its requests are recomputed through `fast` and complete normally; nothing hangs.
    (Token equality under a kill, the restart and draining: tests/serving/test_elastic.py.)"""
    url, routes_log, server = helix
    outcomes, why = kill_mid_burst(url, server, tiny_llama_path)
    assert outcomes == ["length"] * 12, "\n".join(why[-20:])  # every request answered, none failed
    after = completion_tokens(url, tiny_llama_path)
    assert all(len(t) == 24 for t in after)
    assert "Helix node slow lost" in server.log_path.read_text()


def test_a_worker_that_never_comes_up_is_a_clear_start_up_error(tiny_llama_path, tmp_path):
    cluster = yaml.safe_load(yaml.safe_dump(CLUSTER))
    cluster["nodes"][2]["address"] = "127.0.0.1:1"  # a remote node nobody starts
    plan = write_plan(tmp_path, tiny_llama_path, cluster)
    server = VllmServer(tiny_llama_path, ["--executor", "helix", "--helix-plan", str(plan),
                                          "--helix-start-timeout", "120", "--enforce-eager", *COMMON],
                        log_path=tmp_path / "serve.log")
    with pytest.raises(HelixError, match="exited with status"):
        server.start()
    log = server.log_path.read_text()
    # the local nodes came up (eager: no compile, in time even on a loaded machine); the message names exactly
    # the one that did not, and where it was expected
    assert "Helix nodes did not come up within 120 s: slow at 127.0.0.1:1. Start them" in log
    assert "vllm-helix worker --plan PLAN --node NAME" in log
