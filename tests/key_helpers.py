"""A two-node plan on non-loopback addresses, written by the real `vllm-helix plan` (with its keys)."""

import subprocess
import sys

import yaml

NODES = {"near": "10.9.1.2:7301", "far": "10.9.2.2:7302", "spare": "10.9.3.2:7303"}


def cli(*args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "vllm_helix.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert (proc.returncode == 0) == ok, proc.stderr
    return proc


def make_plan(tmp_path, coordinator="10.9.0.1:7300", nodes=NODES):
    cluster = {"name": "wan", "coordinator": {"address": coordinator},
               "nodes": [{"name": n, "gpu": "cpu", "vram": "400GB", "address": a} for n, a in nodes.items()],
               "default_link": {"bandwidth": "100Mbps", "latency": "10ms"}}
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    (tmp_path / "placement.yaml").write_text(yaml.safe_dump({"near": [0, 40], "far": [40, 80]}))
    out = cli("plan", "--cluster", tmp_path / "cluster.yaml", "--throughput", "estimate", "--placement",
              tmp_path / "placement.yaml", "-o", tmp_path / "plan.yaml").stdout
    return tmp_path / "plan.yaml", out
