"""A two-node plan on non-loopback addresses, written by the real `vllm-helix plan` (with its keys)."""

import contextlib
import io
import types

import yaml

from vllm_helix.cli import main

NODES = {"near": "10.9.1.2:7301", "far": "10.9.2.2:7302", "spare": "10.9.3.2:7303"}


def cli(*args, ok=True):
    """`vllm-helix ARGS` in this process (its exit status and output; errors must be one clear line)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in args])
    assert (status == 0) == ok, err.getvalue()
    return types.SimpleNamespace(returncode=status, stdout=out.getvalue(), stderr=err.getvalue())


def make_plan(tmp_path, coordinator="10.9.0.1:7300", nodes=NODES):
    cluster = {"name": "wan", "coordinator": {"address": coordinator},
               "nodes": [{"name": n, "gpu": "cpu", "vram": "400GB", "address": a} for n, a in nodes.items()],
               "default_link": {"bandwidth": "100Mbps", "latency": "10ms"}}
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    (tmp_path / "placement.yaml").write_text(yaml.safe_dump({"near": [0, 40], "far": [40, 80]}))
    out = cli("plan", "--cluster", tmp_path / "cluster.yaml", "--throughput", "estimate", "--placement",
              tmp_path / "placement.yaml", "-o", tmp_path / "plan.yaml").stdout
    return tmp_path / "plan.yaml", out
