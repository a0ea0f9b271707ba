"""`vllm serve --executor helix` refuses plain TCP across hosts unless told: usage errors before any engine."""

import pytest
import yaml
from key_helpers import make_plan
from vllm.utils.argparse_utils import FlexibleArgumentParser

from vllm_helix.executor import protocol as p
from vllm_helix.options import helix_options
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
    start = p.Start({"coordinator": "k" * 40, "near": "n" * 40})
    assert p.decode(p.encode(start)) == start and p.decode(p.encode(p.Start())).public_keys == {}
