import contextlib
import os
import subprocess
import sys

import pytest
from cpu_cap import CpuCap
from serve_helpers import COMMON, TOOLS, write_plan

from vllm_helix.trace import TRACE_ENV
from vllm_helix.vllm_server import VllmServer


@pytest.fixture(scope="session")
def plain(tiny_llama_path, tmp_path_factory):
    """Plain `vllm serve` of the tiny model: the reference for token equality."""
    with VllmServer(tiny_llama_path, [*COMMON, *TOOLS], log_path=tmp_path_factory.mktemp("plain") / "serve.log") as url:
        yield url


@pytest.fixture(scope="session")
def helix(tiny_llama_path, tmp_path_factory):
    """`vllm serve --executor helix` on a branching 3-node local plan (head [0, 2) -> fast | slow [2, 8)), with node
    KV caches so small (--helix-kv-cache-bytes) that a burst of requests must queue. Yields (url, route log, server)."""
    tmp = tmp_path_factory.mktemp("helix")
    plan = write_plan(tmp, tiny_llama_path)
    # 6 MiB per node, the same on every host: holds a 512-token sequence, but not the whole burst
    server = VllmServer(tiny_llama_path, ["--executor", "helix", "--helix-plan", str(plan),
                                          "--helix-route-log", str(tmp / "routes.log"),
                                          "--helix-kv-cache-bytes", str(6 << 20), *COMMON, *TOOLS],
                        log_path=tmp / "serve.log")
    with server as url:
        yield url, tmp / "routes.log", server


@pytest.fixture(scope="session")
def helix_async(tiny_llama_path, tmp_path_factory):
    """The `helix` server's plan and settings under async scheduling (--helix-async), traced (VLLM_HELIX_TRACE).
    Yields (url, server, trace folder)."""
    tmp = tmp_path_factory.mktemp("helix-async")
    plan = write_plan(tmp, tiny_llama_path)
    server = VllmServer(tiny_llama_path, ["--executor", "helix", "--helix-plan", str(plan), "--helix-async",
                                          "--helix-kv-cache-bytes", str(6 << 20), *COMMON, *TOOLS],
                        log_path=tmp / "serve.log", env={TRACE_ENV: str(tmp / "trace")})
    with server as url:
        yield url, server, tmp / "trace"


@pytest.fixture(scope="session")
def profiled(tiny_llama_path, tmp_path_factory):
    """A folder with `vllm-helix profile`'s measured cpu.json of the tiny model (the short sweep, eager, one
    torch thread: as the servers that use it run their nodes), in a cgroup with 20 times the default CPU weight
    where this host allows (root)."""
    folder = tmp_path_factory.mktemp("profiles")
    with contextlib.ExitStack() as stack:
        cap = stack.enter_context(CpuCap("profile", None, weight=20)) if CpuCap.available() else None
        done = subprocess.run([sys.executable, "-m", "vllm_helix.cli", "profile", "--model", str(tiny_llama_path),
                               "--quick", "--enforce-eager", "-o", str(folder / "cpu.json")],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              preexec_fn=cap.enter if cap else None)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def pytest_collection_modifyitems(items):
    """Tests that need the shared Helix server's router without history run before any other test that uses
    it; tests that kill one of its nodes run after every other test."""
    fresh = [item for item in items if item.get_closest_marker("fresh_router")]
    rest = [item for item in items if not item.get_closest_marker("fresh_router")]
    first = next((k for k, item in enumerate(rest) if "helix" in getattr(item, "fixturenames", ())), len(rest))
    items[:] = rest[:first] + fresh + rest[first:]
    items.sort(key=lambda item: item.get_closest_marker("kills_a_node") is not None)
