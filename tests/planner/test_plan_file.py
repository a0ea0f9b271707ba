"""Hand-edited plan files: every malformed field is a one-line error naming it (file, field, row)."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.cluster import ClusterSpec, LinkSpec, NodeSpec, save_cluster
from vllm_helix.planner.model import ModelSpec
from vllm_helix.planner.placement import LayerRange, Placement
from vllm_helix.planner.plan import evaluate_plan, plan_from_dict, plan_to_dict

# 4 layers of LLaMA-2-70B shape, so the bundled A100 profile applies (as tests/sim/tiny_plans.py)
MODEL = ModelSpec(name="tiny70b", num_layers=4, hidden_size=8192, layer_bytes=1.53e9,
                  activation_bytes_per_token=16384, token_bytes=2, profile_name="llama2_70b")


@pytest.fixture(scope="module")
def plan():
    """Two A100s in series, 2 layers each, the coordinator linked to both."""
    nodes = (NodeSpec("a", "A100", 80e9), NodeSpec("b", "A100", 80e9))
    links = tuple(LinkSpec(s, d, 1e9, 1e-3) for s, d in
                  [("coordinator", "a"), ("a", "b"), ("b", "coordinator"), ("coordinator", "b"), ("a", "coordinator")])
    placement = Placement({"a": LayerRange(0, 2), "b": LayerRange(2, 4)})
    return evaluate_plan(ClusterSpec(nodes, links, name="two"), MODEL, placement, "hand")


@pytest.fixture
def data(plan):
    return copy.deepcopy(plan_to_dict(plan))


def test_a_written_plan_reads_back(plan, data):
    back = plan_from_dict(data, "p.yaml")
    assert back.placement == plan.placement and back.model == plan.model and back.flow.arc_flow == plan.flow.arc_flow


def _set(data: dict, path: str, value) -> None:
    """`nodes.0.layers` = value; `del:` before the path removes the key instead."""
    delete = path.startswith("del:")
    *parents, last = path.removeprefix("del:").split(".")
    for key in parents:
        data = data[int(key)] if isinstance(data, list) else data[key]
    if delete:
        del data[last]
    elif isinstance(data, list):
        data[int(last)] = value
    else:
        data[last] = value


CASES = {
    "arc to a node outside the cluster": ("arcs.0.to", "zz", r"arcs\[0\]\.to: 'zz' is neither 'coordinator' nor"),
    "arc without a link": ("arcs.0", {"from": "b", "to": "a", "flow_tokens_per_s": 1.0, "capacity_tokens_per_s": 1.0},
                           r"arcs\[0\]: the plan's cluster has no link b -> a"),
    "negative arc flow": ("arcs.0.flow_tokens_per_s", -1.0, r"arcs\[0\]\.flow_tokens_per_s: expected tokens/s"),
    "arc flow a string": ("arcs.0.capacity_tokens_per_s", "x", r"arcs\[0\]\.capacity_tokens_per_s: expected"),
    "arcs a mapping": ("arcs", {"a": 1}, r"arcs: expected a list of mappings"),
    "arc a list": ("arcs.0", [1, 2], r"arcs\[0\]: expected a mapping"),
    "arc without to": ("del:arcs.0.to", None, r"malformed plan: arcs\[0\] has no 'to' field"),
    "layer_bytes a string": ("model.layer_bytes", "big", r"p.yaml: model.layer_bytes: must be a positive finite"),
    "negative layer_bytes": ("model.layer_bytes", -1.0, r"model.layer_bytes: must be a positive finite"),
    "negative activation": ("model.activation_bytes_per_token", -5, r"model.activation_bytes_per_token: must be"),
    "model a list": ("model", [1], r"p.yaml: model: expected a mapping"),
    "profiles a string": ("profiles", "abc", r"p.yaml: profiles: expected a list of mappings, got 'abc'"),
    "profile a string": ("profiles", ["abc"], r"p.yaml: profiles\[0\]: expected a mapping"),
    "partial_inference 'no'": ("partial_inference", "no", r"partial_inference: expected true or false, got 'no'"),
    "no cluster": ("del:cluster", None, r"p.yaml: malformed plan: no 'cluster' field"),
    "no method": ("del:method", None, r"p.yaml: malformed plan: no 'method' field"),
    "node without layers": ("del:nodes.0.layers", None, r"malformed plan: nodes\[0\] has no 'layers' field"),
    "node layers a string": ("nodes.0.layers", "0-2", r"nodes\[0\]\.layers: '0-2' is not \[start, end\)"),
    "node layers of three": ("nodes.0.layers", [0, 1, 2], r"nodes\[0\]\.layers: \[0, 1, 2\] is not"),
    "node layers bools": ("nodes.0.layers", [False, True], r"nodes\[0\]\.layers"),
    "node twice": ("nodes.1.name", "a", r"nodes\[1\]\.name: 'a' is listed twice"),
    # lists where names belong raised an unhashable TypeError
    "node name a list": ("nodes.0.name", ["a"], r"nodes\[0\]\.name: expected a name \(a string\), got \['a'\]"),
    "arc end a list": ("arcs.0.from", ["x"], r"arcs\[0\]\.from: expected a name \(a string\)"),
    "routing a list": ("routing", ["x"], r"p.yaml: routing: \['x'\] is not one of"),
    "graph a list": ("graph", ["x"], r"graph: \['x'\] is not one of"),
    "node flow null": ("nodes.0.flow_tokens_per_s", None, r"nodes\[0\]\.flow_tokens_per_s: expected tokens/s"),
    "nodes a number": ("nodes", 5, r"p.yaml: nodes: expected a list of mappings, got 5"),
    "max flow a string": ("max_flow_tokens_per_s", "x", r"max_flow_tokens_per_s: expected tokens/s"),
    "max flow infinite": ("max_flow_tokens_per_s", float("inf"), r"max_flow_tokens_per_s: expected tokens/s"),
    "min cut a number": ("min_cut", 5, r"min_cut: expected a list of strings, got 5"),
    "unknown graph": ("graph", "tree", r"graph: 'tree' is not one of"),
    "unknown throughput model": ("throughput_model", "magic", r"throughput_model: 'magic' is not one of"),
    "details a list": ("details", [1], r"details: expected a mapping, got list"),
}


@pytest.mark.parametrize("name", CASES)
def test_a_malformed_plan_field_is_an_error_naming_it(data, name):
    path, value, message = CASES[name]
    _set(data, path, value)
    with pytest.raises(ClusterSpecError, match=message):
        plan_from_dict(data, "p.yaml")


@pytest.mark.parametrize("command", ["simulate", "keys"])
def test_the_cli_refuses_an_arc_to_an_unknown_node_in_one_line(plan, data, tmp_path, command):
    data["arcs"].append({"from": "zz", "to": "coordinator", "flow_tokens_per_s": 5.0, "capacity_tokens_per_s": 5.0})
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    save_cluster(plan.cluster, tmp_path / "cluster.yaml")
    argv = {"simulate": ["simulate", "--cluster", tmp_path / "cluster.yaml", "--plan", tmp_path / "plan.yaml",
                         "--duration", "5"],
            "keys": ["keys", "--plan", tmp_path / "plan.yaml"]}[command]
    proc = subprocess.run([sys.executable, "-m", "vllm_helix.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "arcs[" in proc.stderr and "'zz' is neither" in proc.stderr, proc.stderr
