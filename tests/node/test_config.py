"""WorkerConfig: one set of defaults, the same config through the command line, bad values refused."""

import argparse
import subprocess
import sys

import pytest

from vllm_helix.errors import ConfigError
from vllm_helix.node.config import WorkerConfig


def _parse(argv):
    parser = argparse.ArgumentParser()
    WorkerConfig.add_cli_args(parser)
    return WorkerConfig.from_cli(parser.parse_args(argv))


def test_the_command_line_defaults_are_the_dataclass_defaults():
    assert _parse([]) == WorkerConfig()
    assert WorkerConfig().max_num_batched_tokens == 2048 and not WorkerConfig().enforce_eager


def test_a_config_survives_the_trip_to_a_local_node_command_line():
    config = WorkerConfig(kv_fraction=0.01, max_num_batched_tokens=64, max_num_seqs=8, max_model_len=512,
                          dtype="float32", enforce_eager=True, seed=3, start_timeout_s=45.0, tensor_parallel_size=2)
    assert _parse(config.cli_args()) == config
    assert _parse(WorkerConfig(kv_cache_bytes=1 << 20).cli_args()).kv_cache_bytes == 1 << 20


@pytest.mark.parametrize("field, value, message", [
    ("kv_fraction", 0.0, r"--kv-fraction must be in \(0, 1\)"),
    ("max_num_seqs", 0, "--max-num-seqs must be >= 1"),
    ("max_model_len", -5, "--max-model-len must be >= 1"),
    ("start_timeout_s", 0.0, "--start-timeout must be > 0"),
    ("start_timeout_s", float("nan"), "--start-timeout must be > 0"),
    ("tensor_parallel_size", 0, "--tensor-parallel-size must be >= 1"),
])
def test_bad_values_are_refused_naming_the_option(field, value, message):
    with pytest.raises(ConfigError, match=message):
        WorkerConfig(**{field: value})


def test_a_bad_worker_option_is_a_usage_error_of_the_worker_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vllm_helix.cli", "worker", "--plan", str(tmp_path / "p.yaml"),
                           "--node", "a", "--model", str(tmp_path), "--kv-fraction", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "usage: vllm-helix worker" in proc.stderr
    assert "vllm-helix worker: error: --kv-fraction must be in (0, 1), got 2.0" in proc.stderr


def test_the_tensor_parallel_size_comes_from_the_plan_node_unless_given_and_must_fit_its_gpus(tmp_path):
    assert WorkerConfig().for_node("a", gpus=4, plan_tp=2).tensor_parallel_size == 2
    assert WorkerConfig(tensor_parallel_size=4).for_node("a", gpus=4, plan_tp=2).tensor_parallel_size == 4
    with pytest.raises(ConfigError, match="--tensor-parallel-size 3 is more than node a's 2 gpus"):
        WorkerConfig(tensor_parallel_size=3).for_node("a", gpus=2, plan_tp=2)


def test_more_tensor_parallelism_than_the_plan_node_has_gpus_is_a_usage_error_before_loading(tmp_path):
    import yaml

    cluster = {"coordinator": {"address": "127.0.0.1:5999"}, "default_link": {"bandwidth": "1GB/s"},
               "nodes": [{"name": "a", "gpu": "A100", "gpus": 2, "vram": "400GB", "address": "127.0.0.1:6001"}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cluster))
    (tmp_path / "p.yaml").write_text("a: [0, 80]\n")
    plan = subprocess.run([sys.executable, "-m", "vllm_helix.cli", "plan", "--cluster", str(tmp_path / "c.yaml"),
                           "--placement", str(tmp_path / "p.yaml"), "--throughput", "estimate",
                           "-o", str(tmp_path / "plan.yaml")], capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    proc = subprocess.run([sys.executable, "-m", "vllm_helix.cli", "worker", "--plan", str(tmp_path / "plan.yaml"),
                           "--node", "a", "--model", str(tmp_path / "no-model"), "--helix-insecure",
                           "--tensor-parallel-size", "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "vllm-helix worker: error: --tensor-parallel-size 3 is more than node a's 2 gpus" in proc.stderr
