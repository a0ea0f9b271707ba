"""Helpers for the transport tests: fast heartbeats, helper peer processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vllm_helix.comm import EndpointOptions

FAST = EndpointOptions(heartbeat_s=0.05, peer_timeout_s=0.6, linger_s=0.5)
PEER_SCRIPT = Path(__file__).with_name("peer_echo.py")


def start_peer(*args: str, netns: str | None = None) -> tuple[subprocess.Popen, str]:
    """Start tests/comm/peer_echo.py (optionally inside a network namespace); returns (process, its address)."""
    cmd = [sys.executable, str(PEER_SCRIPT), *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # noqa: SIM115
    line = proc.stdout.readline().strip()
    if not line.startswith("tcp://"):
        proc.kill()
        raise RuntimeError(f"peer did not start: {line!r}")
    return proc, line
