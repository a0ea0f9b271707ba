"""`vllm serve --executor helix` refuses plain TCP across hosts unless told: usage errors before any engine."""

import pytest
import yaml
from key_helpers import make_plan
from vllm.utils.argparse_utils import FlexibleArgumentParser

from vllm_helix import wire as p
from vllm_helix.comm.messages import decode_header, encode_header
from vllm_helix.node.config import WorkerConfig
from vllm_helix.options import helix_options
from vllm_helix.planner.files import load_plan
from vllm_helix.planner.keys import key_path
from vllm_helix.plugin import add_helix_args


def parse(*argv):
    return helix_options(add_helix_args(FlexibleArgumentParser()).parse_args(["--executor", "helix", *argv])
                         .additional_config)


def test_serve_needs_the_coordinator_key_or_insecure(tmp_path, capsys):
    plan, _ = make_plan(tmp_path)
    assert parse("--helix-plan", str(plan))["insecure"] is False  # the key beside the plan is found
    moved = tmp_path / "elsewhere.key"
    key_path(plan, "coordinator").rename(moved)
    with pytest.raises(SystemExit) as exit_:
        parse("--helix-plan", str(plan))
    assert exit_.value.code == 2 and "cannot read key file" in capsys.readouterr().err
    assert parse("--helix-plan", str(plan), "--helix-key", str(moved))["key"] == str(moved)
    with pytest.raises(SystemExit):
        parse("--helix-plan", str(plan), "--helix-key", str(key_path(plan, "near")))
    assert "this is the key of 'near'" in capsys.readouterr().err

    data = yaml.safe_load(plan.read_text())
    del data["public_keys"]
    plan.write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit):
        parse("--helix-plan", str(plan))
    err = capsys.readouterr().err
    assert "no CURVE keys: run `vllm-helix keys --plan" in err and "--helix-insecure" in err
    assert parse("--helix-insecure", "--helix-plan", str(plan))["insecure"] is True


def test_start_carries_the_coordinators_public_keys():
    def wired(message):
        return p.decode(decode_header(encode_header(p.encode(message))))

    start = p.Start({"coordinator": "k" * 40, "near": "n" * 40})
    assert wired(start) == start and wired(p.Start()).public_keys == {}


def test_local_nodes_get_the_servers_insecure_flag_and_their_key_through_worker_config():
    config = WorkerConfig(insecure=True, key="/keys/plan.near.key")
    assert config.cli_args()[-3:] == ["--key", "/keys/plan.near.key", "--helix-insecure"]
    assert "--key" not in WorkerConfig().cli_args() and "--helix-insecure" not in WorkerConfig().cli_args()


def test_serve_with_helix_cluster_on_remote_addresses_plans_with_keys(tmp_path, tiny_llama_path, capsys):
    from serve_helpers import CLUSTER

    addresses = iter(f"10.9.{i}.2:73{i:02d}" for i in range(10))
    cluster = {**CLUSTER, "coordinator": {"address": next(addresses)},
               "nodes": [{**n, "address": next(addresses)} for n in CLUSTER["nodes"]]}
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    parser = add_helix_args(FlexibleArgumentParser())
    parser.add_argument("model_tag", nargs="?")
    args = parser.parse_args(["--executor", "helix", "--helix-cluster", str(tmp_path / "cluster.yaml"),
                              "--helix-plan-time-limit", "5", str(tiny_llama_path)])
    plan_path = helix_options(args.additional_config)["plan"]  # no "no keys" usage error: the plan has them
    plan = load_plan(plan_path)
    assert set(plan.public_keys) == {"coordinator", *plan.placement.ranges}
    for name in plan.public_keys:
        assert key_path(plan_path, name).stat().st_mode & 0o077 == 0
    assert "CURVE secret keys" in capsys.readouterr().out
