"""Emulated hosts for multi-host tests: network namespaces joined to the root namespace by shaped veth links.

Host i lives in namespace `<tag>h<i>` at 10.<net>.<i>.2; the root side of its link is 10.<net>.<i>.1 and is
its default gateway, and the root namespace forwards between hosts, so every host reaches every other one
across two shaped links. Traffic stays on addresses inside namespaces this fixture made.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

NEEDS_ROOT = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("tc") is None, reason="needs iproute2 (ip, tc)"),
]


def sh(*cmd: str) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


# Host numbers run on across the whole test process: the kernel frees a deleted namespace's veth pair
# asynchronously, so reusing a name right after teardown can fail with "File exists".
_host_numbers = itertools.count(1)


@dataclass(frozen=True)
class Host:
    ns: str
    address: str  # inside the namespace
    gateway: str  # the root side of its link
    root_dev: str  # the root side's veth (`ip link set <root_dev> down` cuts the host off)
    shaping: str

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]


def shape(dev: str, ns: str | None, rate: str, delay_ms: float) -> str:
    pre = ["ip", "netns", "exec", ns] if ns else []
    try:
        sh(*pre, "tc", "qdisc", "add", "dev", dev, "root", "netem", "rate", rate, "delay", f"{delay_ms}ms")
        return f"netem rate {rate} delay {delay_ms}ms"
    except RuntimeError:  # a kernel without sch_netem: bandwidth only
        sh(*pre, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "64kb", "latency", "100ms")
        return f"tbf rate {rate} (no netem in this kernel)"


class NetnsHosts:
    """Makes hosts and removes them all on close() (the `make_host` fixture; bench/bench_secure.py)."""

    def __init__(self) -> None:
        self.tag, self.net = f"hx{os.getpid() % 10000}", 80 + os.getpid() % 40
        self.made: list[tuple[str, str]] = []
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            self.forward = f.read().strip()

    def make(self, rate: str = "1gbit", delay_ms: float = 1.0) -> Host:
        i = next(_host_numbers)
        ns, root_dev, ns_dev = f"{self.tag}h{i}", f"{self.tag}r{i}", f"{self.tag}n{i}"
        gateway, address = f"10.{self.net}.{i}.1", f"10.{self.net}.{i}.2"
        sh("ip", "netns", "add", ns)
        self.made.append((ns, root_dev))
        sh("ip", "link", "add", root_dev, "type", "veth", "peer", "name", ns_dev)
        sh("ip", "link", "set", ns_dev, "netns", ns)
        sh("ip", "addr", "add", f"{gateway}/24", "dev", root_dev)
        sh("ip", "link", "set", root_dev, "up")
        for argv in (["ip", "addr", "add", f"{address}/24", "dev", ns_dev], ["ip", "link", "set", ns_dev, "up"],
                     ["ip", "link", "set", "lo", "up"], ["ip", "route", "add", "default", "via", gateway]):
            sh("ip", "netns", "exec", ns, *argv)
        shaping = shape(root_dev, None, rate, delay_ms)
        shape(ns_dev, ns, rate, delay_ms)
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")
        return Host(ns, address, gateway, root_dev, shaping)

    def close(self) -> None:
        for ns, root_dev in self.made:  # deleting the root end first frees the pair now, not when the kernel gets to it
            subprocess.run(["ip", "link", "del", root_dev], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write(self.forward)


@pytest.fixture
def make_host() -> Iterator[Callable[[str, float], Host]]:
    hosts = NetnsHosts()
    yield hosts.make
    hosts.close()


@contextlib.contextmanager
def sniff(dev: str, limit: int = 64 << 20) -> Iterator[bytearray]:
    """Every byte crossing `dev` (whole frames, headers included) while the block runs: what an
    eavesdropper on that link reads. Complete once the block has exited: what the kernel queued for the socket
    and a starved reader thread had not taken yet is read then."""
    seen = bytearray()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
    sock.bind((dev, 0))
    sock.settimeout(0.1)
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set() and len(seen) < limit:
            with contextlib.suppress(TimeoutError, OSError):
                seen.extend(sock.recv(65536))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield seen
    finally:
        stop.set()
        reader.join(2)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError, OSError):
            while len(seen) < limit:
                seen.extend(sock.recv(65536))
        sock.close()
