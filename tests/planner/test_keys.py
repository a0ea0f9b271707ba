"""Keys come with the plan: `vllm-helix plan` / `vllm-helix keys` (real files, real CURVE keys)."""

from __future__ import annotations

import stat

import pytest
import yaml
from key_helpers import cli, make_plan

from vllm_helix.comm import CurveKeys
from vllm_helix.errors import HelixError
from vllm_helix.planner.files import load_plan
from vllm_helix.planner.keys import identity, is_loopback, key_path


def test_plan_with_remote_addresses_comes_with_one_private_key_file_per_node(tmp_path):
    plan_path, out = make_plan(tmp_path)
    plan = load_plan(plan_path)
    assert set(plan.public_keys) == {"coordinator", "near", "far"}  # `spare` holds no layers
    text = plan_path.read_text()
    for name in plan.public_keys:
        path = key_path(plan_path, name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        secret = yaml.safe_load(path.read_text())["secret"]
        assert secret not in text  # nothing secret in the plan
        assert CurveKeys.from_secret(secret).public == plan.public_keys[name]
        assert str(path) in out
    assert f"{key_path(plan_path, 'far')} goes to node far (10.9.2.2:7302)" in out
    again, _ = make_plan(tmp_path)  # re-planning keeps the keys already handed out
    assert load_plan(again).public_keys == plan.public_keys


def test_local_plans_stay_key_free_and_keys_adds_them_on_request(tmp_path):
    plan_path, out = make_plan(tmp_path, "local", {"near": "local", "far": "127.0.0.1:7302"})
    assert not load_plan(plan_path).public_keys and "CURVE" not in out and not list(tmp_path.glob("*.key"))
    assert identity(load_plan(plan_path), plan_path, "near") is None  # plain TCP, no flag needed
    cli("keys", "--plan", plan_path)
    assert set(load_plan(plan_path).public_keys) == {"coordinator", "near", "far"}


def test_rotation_replaces_one_key_and_the_old_one_is_no_longer_the_plans(tmp_path):
    plan_path, _ = make_plan(tmp_path)
    before = load_plan(plan_path).public_keys
    old_far = tmp_path / "far.old.key"
    old_far.write_bytes(key_path(plan_path, "far").read_bytes())
    old_far.chmod(0o600)
    out = cli("keys", "--plan", plan_path, "--rotate", "far").stdout
    after = load_plan(plan_path).public_keys
    assert after["far"] != before["far"] and {k: v for k, v in after.items() if k != "far"} == {
        k: v for k, v in before.items() if k != "far"}
    assert "[new key]" in out and "restart" in out
    plan = load_plan(plan_path)
    keys = identity(plan, plan_path, "far")
    assert keys.public == after["far"] and set(keys.allowed_peers) == {after["coordinator"], after["near"]}
    with pytest.raises(HelixError, match="not the plan's key for 'far'"):
        identity(plan, plan_path, "far", str(old_far))


def test_who_may_send_to_whom(tmp_path):
    plan = load_plan(make_plan(tmp_path)[0])
    keys = plan.public_keys
    assert set(identity(plan, tmp_path / "plan.yaml", "coordinator").allowed_peers) == {keys["near"], keys["far"]}
    assert identity(plan, tmp_path / "plan.yaml", "near").allowed_peers == (keys["coordinator"],)
    assert set(identity(plan, tmp_path / "plan.yaml", "far").allowed_peers) == {keys["coordinator"], keys["near"]}


@pytest.mark.parametrize("args, message", [
    (["--rotate", "nobody"], "--rotate nobody: not a node of this plan"),
])
def test_keys_bad_input(tmp_path, args, message):
    plan_path, _ = make_plan(tmp_path)
    assert message in cli("keys", "--plan", plan_path, *args, ok=False).stderr


def test_worker_key_errors_come_before_the_model_loads(tmp_path):
    plan_path, _ = make_plan(tmp_path)
    worker = ["worker", "--plan", plan_path, "--model", tmp_path / "no-model"]
    assert "this is the key of 'near', not of 'far'" in cli(*worker, "--node", "far", "--key",
                                                            key_path(plan_path, "near"), ok=False).stderr
    key_path(plan_path, "far").chmod(0o644)
    assert "chmod 600" in cli(*worker, "--node", "far", ok=False).stderr
    key_path(plan_path, "far").chmod(0o600)
    key_path(plan_path, "far").write_bytes(b"name: far\nsecret: caf\xe9\n")  # not UTF-8
    assert "not a vllm-helix key file" in cli(*worker, "--node", "far", ok=False).stderr
    key_path(plan_path, "far").unlink()
    assert "cannot read key file" in cli(*worker, "--node", "far", ok=False).stderr


def test_remote_plan_without_keys_needs_keys_or_the_insecure_flag(tmp_path, caplog):
    plan_path, _ = make_plan(tmp_path)
    data = yaml.safe_load(plan_path.read_text())
    del data["public_keys"]
    plan_path.write_text(yaml.safe_dump(data))
    err = cli("worker", "--plan", plan_path, "--node", "near", "--model", tmp_path / "m", ok=False).stderr
    assert "not a loopback address and the plan has no CURVE keys" in err and "vllm-helix keys --plan" in err
    assert "--helix-insecure" in err
    with caplog.at_level("WARNING", logger="vllm_helix.planner.keys"):
        assert identity(load_plan(plan_path), plan_path, "near", insecure=True) is None
    assert "--helix-insecure: links to coordinator at 10.9.0.1:7300" in caplog.text
    assert "plain TCP" in caplog.text


@pytest.mark.parametrize("address, loopback", [("local", True), ("127.0.0.1:5", True), ("localhost:5", True),
                                               ("[::1]:5", True), ("10.0.0.2:5", False), ("8.8.8.8:5", False),
                                               ("gpu-host.example:5", False), ("tcp://127.0.0.1:5", True)])
def test_loopback(address, loopback):
    assert is_loopback(address) == loopback
