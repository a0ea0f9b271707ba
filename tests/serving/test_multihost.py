"""Helix across hosts, secure by default: workers in network namespaces behind shaped links (netem).

The coordinator (`vllm serve --executor helix`, no security flag) runs in the root namespace; worker `near`
starts before it, worker `far` several seconds after it, with a key rotated just before. The plan's
addresses are not loopback, so every link is CURVE: greedy tokens equal plain vLLM's; an eavesdropper on
far's link reads none of the protocol; processes holding no key, a made-up key, the rotated-out key or a
node's key in a direction the plan does not use get nothing executed and nothing back (each refusal
logged with its address); and the cluster goes on serving. Then far's key is rotated while serving and its
worker restarted with the new key: it rejoins, requests complete, and its previous key is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from netns_hosts import NEEDS_ROOT, sniff
from serve_helpers import COMMON, completion_tokens, write_plan

from vllm_helix.planner.keys import key_path
from vllm_helix.vllm_server import VllmServer

pytestmark = [*NEEDS_ROOT, pytest.mark.engine, pytest.mark.slow]
INTRUDER = Path(__file__).with_name("intruder.py")
ENV = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="nobind")


def wait_listening(host: str, port: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listening on {host}:{port}")


def intrude(host, attempts: list[dict], watch_s: float = 4.0) -> dict[str, dict]:
    """Run tests/serving/intruder.py inside `host`'s namespace; results by label."""
    argv = host.command(sys.executable, str(INTRUDER), json.dumps(attempts), host.address, str(watch_s))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr
    return {r["label"]: r for r in json.loads(done.stdout)}


def secret(path: Path) -> str:
    return yaml.safe_load(path.read_text())["secret"]


def assert_got_nothing(result: dict) -> None:
    assert result["received"] == [] and result["messages_in"] == 0, result
    assert "alive" not in result["states"], result  # not even a heartbeat: the handshake never completed


def test_workers_in_namespaces_serve_encrypted_by_default(tiny_llama_path, plain, make_host, tmp_path):
    near, far, evil = make_host("500mbit", 2), make_host("100mbit", 10), make_host("1gbit", 1)
    cluster = {
        "name": "two-hosts",
        "coordinator": {"address": f"{near.gateway}:7300"},
        "nodes": [{"name": "near", "gpu": "cpu", "vram": "4GB", "address": f"{near.address}:7301"},
                  {"name": "far", "gpu": "cpu", "vram": "4GB", "address": f"{far.address}:7302"}],
        "default_link": {"bandwidth": "100Mbps", "latency": "10ms"},
    }
    plan = write_plan(tmp_path, tiny_llama_path, cluster, {"near": [0, 3], "far": [3, 8]})  # with keys
    rotated_out = tmp_path / "far-old.key"
    shutil.copy(key_path(plan, "far"), rotated_out)
    subprocess.run([sys.executable, "-m", "vllm_helix.cli", "keys", "--plan", str(plan), "--rotate", "far"],
                   check=True, capture_output=True)
    public = yaml.safe_load(plan.read_text())["public_keys"]

    def worker(host, name, *key):
        argv = [sys.executable, "-m", "vllm_helix.cli", "worker", "--plan", str(plan), "--node", name, "--model",
                str(tiny_llama_path), "--kv-fraction", "0.01", "--dtype", "float32", "--max-model-len", "512", *key]
        with open(tmp_path / f"{name}.log", "w") as log:
            return subprocess.Popen(host.command(*argv), stdout=log, stderr=subprocess.STDOUT, env=ENV)

    impostor: dict[str, dict] = {}

    def far_joins_after_an_impostor_tried_its_old_key():
        wait_listening(near.gateway, 7300)
        impostor.update(intrude(far, [{"label": "rotated-out far key -> coordinator", "name": "far",
                                       "target": f"{near.gateway}:7300", "target_key": public["coordinator"],
                                       "secret": secret(rotated_out), "message": "hello"}]))
        workers.append(worker(far, "far"))  # its new key, found beside the plan

    workers = [worker(near, "near", "--key", str(key_path(plan, "near")))]
    server = VllmServer(tiny_llama_path, ["--executor", "helix", "--helix-plan", str(plan),
                                          "--helix-start-timeout", "300", "--helix-reroute-timeout", "600",
                                          *COMMON], log_path=tmp_path / "serve.log")
    late = threading.Thread(target=far_joins_after_an_impostor_tried_its_old_key, daemon=True)
    late.start()
    try:
        with server as url:
            expected = completion_tokens(plain, tiny_llama_path)
            with sniff(far.root_dev) as wire:
                assert completion_tokens(url, tiny_llama_path) == expected
            wire = bytes(wire)
            attacks = intrude(evil, [
                {"label": "no key -> near", "name": "coordinator", "target": f"{near.address}:7301",
                 "target_key": None, "secret": None, "message": "step"},
                {"label": "made-up key -> near", "name": "coordinator", "target": f"{near.address}:7301",
                 "target_key": public["near"], "secret": "new", "message": "step"},
                {"label": "far's key -> near (not a planned sender)", "name": "far",
                 "target": f"{near.address}:7301", "target_key": public["near"],
                 "secret": secret(key_path(plan, "far")), "message": "step"},
                {"label": "rotated-out far key -> coordinator", "name": "far", "target": f"{near.gateway}:7300",
                 "target_key": public["coordinator"], "secret": secret(rotated_out), "message": "hello"},
            ])
            assert completion_tokens(url, tiny_llama_path) == expected  # still serving, same tokens
            # rotate far's key while serving: rotating and restarting its worker is all it takes
            serving_key = tmp_path / "far-serving.key"
            shutil.copy(key_path(plan, "far"), serving_key)
            subprocess.run([sys.executable, "-m", "vllm_helix.cli", "keys", "--plan", str(plan), "--rotate", "far"],
                           check=True, capture_output=True)
            workers[1].kill()
            workers[1].wait(120)  # `ip netns exec` reaps the worker once it has died
            workers.append(worker(far, "far"))
            assert completion_tokens(url, tiny_llama_path) == expected  # waits for far to rejoin
            rotated_during_serving = intrude(far, [
                {"label": "far's key before the second rotation -> coordinator", "name": "far",
                 "target": f"{near.gateway}:7300", "target_key": public["coordinator"],
                 "secret": secret(serving_key), "message": "hello"}])
    finally:
        late.join(60)
        time.sleep(5)  # the workers lose the coordinator (heartbeats) and say Hello again: SIGTERM ends them at once
        for process in workers:
            process.terminate()
            process.wait(30)
    assert all(p.returncode is not None for p in workers)

    assert len(wire) > 50_000, len(wire)  # hidden states crossed far's link...
    for marker in (b"helix", b"tokens", b"step"):  # ...sealed: no header, message kind or tag readable
        assert marker not in wire, marker
    for result in [*impostor.values(), *attacks.values(), *rotated_during_serving.values()]:
        assert_got_nothing(result)
    serve_log, near_log = (tmp_path / "serve.log").read_text(), (tmp_path / "near.log").read_text()
    rotated_at = serve_log.index("Helix node far has a new key (rotated)")
    assert "rejoined" in serve_log[rotated_at:]
    assert f"refused a connection from {far.address}" in serve_log  # the impostor, before far joined
    assert f"refused a connection from {evil.address}" in serve_log
    assert near_log.count(f"refused a connection from {evil.address}") == 1  # once per address
    for log in (serve_log, near_log, (tmp_path / "far.log").read_text()):
        assert "intruder-request" not in log and "990001" not in log  # no step of theirs ran anywhere
