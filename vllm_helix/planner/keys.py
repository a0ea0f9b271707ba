"""CURVE keys of a plan, and which keys each process of a cluster uses (README "Security").

Every node of a plan and the coordinator get a CURVE key pair: the public keys go into the plan
(`public_keys`), each secret into its own file beside the plan, `<plan stem>.<name>.key`, mode 0600, to be
copied only to that host. A plan whose addresses are all loopback or `local` needs no keys; a plan with
keys runs every link encrypted and authenticated; any other address without keys is refused unless the
user asks for plain TCP (`--helix-insecure`).

Who may send to whom: the coordinator accepts the plan's nodes; a node accepts the coordinator and its
planned neighbours — the nodes whose layer range ends where its own starts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import stat
from pathlib import Path

import yaml

from vllm_helix.errors import ClusterSpecError, HelixError
from vllm_helix.planner.cluster import COORDINATOR
from vllm_helix.planner.plan import Plan

logger = logging.getLogger(__name__)
LOCAL = "local"


def is_loopback(address: str) -> bool:
    """`local`, `localhost:P`, `127.x.x.x:P`, `[::1]:P` (host names are not resolved: they count as remote)."""
    if address == LOCAL:
        return True
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def key_owners(plan: Plan) -> list[str]:
    """The coordinator and every node that holds layers."""
    return [COORDINATOR, *plan.placement.ranges]


def address_of(plan: Plan, name: str) -> str:
    return plan.cluster.coordinator.address if name == COORDINATOR else plan.cluster.node(name).address


def remote_addresses(plan: Plan) -> list[str]:
    return [f"{n} at {address_of(plan, n)}" for n in key_owners(plan) if not is_loopback(address_of(plan, n))]


def key_path(plan_path: str | Path, name: str) -> Path:
    """`plans/plan.yaml`, `near` -> `plans/plan.near.key`."""
    plan_path = Path(plan_path)
    return plan_path.with_name(f"{plan_path.stem}.{name}.key")


# ------------------------------------------------------------------------------------ key files


def write_key(path: Path, name: str, secret: str) -> None:
    """Write a secret key file readable by its owner only (created 0600, never briefly wider)."""
    body = (f"# vllm-helix CURVE secret key of {name!r}: copy it only to that host and keep it private.\n"
            + yaml.safe_dump({"name": name, "secret": secret}))
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(body)


def read_key(path: str | Path, name: str):
    """The CurveKeys (no allow-list yet) in `path`, which must belong to `name` and be private."""
    from vllm_helix.comm import CurveKeys

    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise HelixError(f"{path}: cannot read key file ({exc.strerror}); `vllm-helix keys --plan PLAN` writes "
                         f"one per node beside the plan") from None
    except (yaml.YAMLError, UnicodeDecodeError):  # not a key file: said below
        data = None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise HelixError(f"{path}: secret key file is open to other users (mode {stat.S_IMODE(mode):04o}); "
                         f"run `chmod 600 {path}`")
    if not (isinstance(data, dict) and isinstance(data.get("secret"), str) and "name" in data):
        raise HelixError(f"{path}: not a vllm-helix key file (expected 'name:' and 'secret:')")
    if data["name"] != name:
        raise HelixError(f"{path}: this is the key of {data['name']!r}, not of {name!r}")
    try:
        return CurveKeys.from_secret(data["secret"])
    except ValueError as exc:
        raise HelixError(f"{path}: secret: {exc}") from None


# ------------------------------------------------------------------------------------ issuing


def save_plan_with_keys(plan: Plan, path: str | Path) -> tuple[Plan, list[str]]:
    """Write `plan`; one whose links leave this host is encrypted by default, so it gets its keys first.
    Returns the plan as written and `issue_keys`' lines (empty for a local plan)."""
    from vllm_helix.planner.plan import save_plan

    lines: list[str] = []
    if remote_addresses(plan):
        plan, lines = issue_keys(plan, path)
    save_plan(plan, path)
    return plan, lines


def issue_keys(plan: Plan, plan_path: str | Path, rotate: tuple[str, ...] = ()) -> tuple[Plan, list[str]]:
    """Give the coordinator and every node of `plan` a key pair; keep existing key files beside the plan
    unless rotated. Returns the plan with its public keys and one line per file saying where it goes."""
    from vllm_helix.comm import CurveKeys

    owners = key_owners(plan)
    for name in rotate:
        if name not in owners:
            raise ClusterSpecError(f"{plan_path}: --rotate {name}: not a node of this plan "
                                   f"(nodes: {', '.join(owners)})")
    public, lines = {}, []
    for name in owners:
        path = key_path(plan_path, name)
        keys = None
        if name not in rotate and path.exists():
            keys = read_key(path, name)
        if keys is None:
            keys = CurveKeys.generate()
            write_key(path, name, keys.secret)
        public[name] = keys.public
        where = "stays with `vllm serve`" if name == COORDINATOR else f"goes to node {name}"
        lines.append(f"{path} {where} ({address_of(plan, name)})" + (" [new key]" if name in rotate else ""))
    return dataclasses.replace(plan, public_keys=public), lines


# ------------------------------------------------------------------------------------ at start-up


def predecessors(plan: Plan, node: str) -> list[str]:
    """The planned neighbours that may send `node` steps: those whose layers end where its own begin."""
    start = plan.placement[node].start
    return [n for n, r in plan.placement.ranges.items() if r.end == start and n != node]


def allowed_senders(plan: Plan, name: str) -> list[str]:
    if name == COORDINATOR:
        return list(plan.placement.ranges)
    return [COORDINATOR, *predecessors(plan, name)]


def identity(plan: Plan, plan_path: str | Path, name: str, key_file: str | None = None, insecure: bool = False):
    """CurveKeys for `name` (coordinator or node) with its allow-list, or None for plain TCP.

    Plain TCP: a plan without keys whose addresses are all loopback/local, or `--helix-insecure` (warned).
    Anything else without usable keys is a HelixError that says what to run.
    """
    remote = remote_addresses(plan)
    if insecure:
        if remote:
            logger.warning("--helix-insecure: links to %s carry prompts and activations in plain TCP, readable "
                           "and forgeable by anyone on the path", ", ".join(remote))
        return None
    if not plan.public_keys:
        if remote:
            raise HelixError(f"{plan_path}: {', '.join(remote)} is not a loopback address and the plan has no "
                             f"CURVE keys: run `vllm-helix keys --plan {plan_path}` and give each worker its key "
                             f"file (--key), or pass --helix-insecure for plain TCP")
        return None
    missing = [n for n in key_owners(plan) if n not in plan.public_keys]
    if missing:
        raise HelixError(f"{plan_path}: public_keys has no key for {', '.join(missing)}: run "
                         f"`vllm-helix keys --plan {plan_path}`")
    path = Path(key_file) if key_file else key_path(plan_path, name)
    keys = read_key(path, name)
    if keys.public != plan.public_keys[name]:
        raise HelixError(f"{path}: its public key is not the plan's key for {name!r} (rotated? use the key file "
                         f"and plan that `vllm-helix keys` wrote together)")
    allowed = tuple(plan.public_keys[n] for n in allowed_senders(plan, name))
    return dataclasses.replace(keys, allowed_peers=allowed)
