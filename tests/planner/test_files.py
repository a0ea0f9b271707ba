"""The planner's one file-reader module: format dispatch, the plan parsed once per process, no import cycles."""

import ast
from pathlib import Path

import pytest

import vllm_helix.planner as planner_pkg
from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.examples import reference_example
from vllm_helix.planner.files import load_cluster, load_placement, load_plan
from vllm_helix.planner.plan import evaluate_plan, save_plan


def _write_plan(tmp_path):
    ex = reference_example("swarm")
    path = tmp_path / "plan.yaml"
    save_plan(evaluate_plan(ex.cluster, ex.model, ex.placement, "swarm"), path)
    return ex, path


def test_a_plan_file_is_parsed_once_until_it_changes(tmp_path):
    ex, path = _write_plan(tmp_path)
    first = load_plan(path)
    assert load_plan(str(path)) is first  # same file: the same parsed Plan
    assert load_placement(path, ex.cluster) == first.placement
    save_plan(evaluate_plan(ex.cluster, ex.model, reference_example("ilp").placement, "ilp"), path)
    second = load_plan(path)
    assert second is not first and second.method == "ilp"


def test_a_missing_or_malformed_plan_is_a_clear_error(tmp_path):
    with pytest.raises(ClusterSpecError, match="cannot read plan"):
        load_plan(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("helix_plan: 1\nmethod: x\n")
    with pytest.raises(ClusterSpecError, match="bad.yaml: malformed plan"):
        load_plan(bad)


def test_cluster_reader_dispatches_on_the_suffix(tmp_path):
    ex = reference_example("ilp")
    from vllm_helix.planner.cluster import save_cluster
    from vllm_helix.planner.examples import reference_dir

    save_cluster(ex.cluster, tmp_path / "c.yaml")
    assert load_cluster(tmp_path / "c.yaml") == load_cluster(reference_dir() / "single24.ini") == ex.cluster


def _imports(path: Path) -> set[str]:
    """planner modules a module imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vllm_helix.planner."):
            found.add(node.module.split(".")[2])
    return found


def test_a_plan_keeps_its_routing_and_a_bad_one_is_a_clear_error(tmp_path):
    ex = reference_example("ilp")
    path = tmp_path / "direct.yaml"
    direct = evaluate_plan(ex.cluster, ex.model, ex.placement, "ilp", routing="direct")
    save_plan(direct, path)
    loaded = load_plan(path)
    assert loaded.flow.routing == "direct" and loaded.flow.arc_flow == pytest.approx(direct.flow.arc_flow)
    path.write_text(path.read_text().replace("routing: direct", "routing: zigzag"))
    with pytest.raises(ClusterSpecError, match="routing: 'zigzag' is not one of"):
        load_plan(path)


def test_format_modules_do_not_import_each_other():
    root = Path(planner_pkg.__file__).parent
    graph = {p.stem: _imports(p) for p in root.glob("*.py")}
    for module in ("cluster", "ini", "plan", "placement"):
        assert not graph[module] & {"files", "ini", "plan"} - {module}, (module, graph[module])
    assert {"cluster", "ini", "plan"} <= graph["files"]
