"""The planner's one file-reader module: format dispatch, the plan parsed once per process, no import cycles."""

import ast
import subprocess
import sys
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


@pytest.mark.parametrize("text, message", [
    ("nodes: [unclosed", r"not valid YAML \(expected ',' or '\]', but got '<stream end>' at line 1, column 17\)$"),
    ("nodes: [1" + "0" * 5000 + "]", r"not valid YAML \(Exceeds the limit \(4300 digits\)"),  # a ValueError
    ("[" * 20_000 + "]" * 20_000, r"not valid YAML \(nested too deeply\)$"),  # a RecursionError
])
@pytest.mark.parametrize("read", [load_cluster, load_plan])
def test_yaml_past_the_parsers_limits_is_one_line_error(tmp_path, text, message, read):
    path = tmp_path / "f.yaml"
    path.write_text(text)
    with pytest.raises(ClusterSpecError, match=rf"^{path}: cannot read \w+: {message}") as info:
        read(path)
    assert "\n" not in str(info.value)


NOT_UTF8 = {
    "latin-1": "name: caf\xe9\n".encode("latin-1"),
    "utf-16": "nodes: []\n".encode("utf-16"),  # with its byte-order mark
    "binary": b"\xff\xfe\x00name: x\n",
}


@pytest.mark.parametrize("content", NOT_UTF8.values(), ids=NOT_UTF8.keys())
@pytest.mark.parametrize("name, read", [
    ("c.yaml", load_cluster),
    ("c.ini", load_cluster),
    ("p.yaml", lambda path: load_placement(path, reference_example("ilp").cluster)),
    ("p.ini", lambda path: load_placement(path, reference_example("ilp").cluster)),
    ("plan.yaml", load_plan),
])
def test_a_file_that_is_not_utf8_is_a_clear_error(tmp_path, content, name, read):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ClusterSpecError, match=rf"{path}: .*not UTF-8 text \(byte 0x[0-9a-f]{{2}} at offset \d+\)"):
        read(path)


def test_the_cli_says_a_file_is_not_utf8(tmp_path):
    from vllm_helix.planner.examples import reference_dir

    (tmp_path / "c.yaml").write_bytes(NOT_UTF8["utf-16"])
    (tmp_path / "p.yaml").write_bytes(NOT_UTF8["latin-1"])
    single24 = reference_dir() / "single24.ini"
    for args, said in ((["--cluster", tmp_path / "c.yaml", "--placement", tmp_path / "p.yaml"],
                        f"{tmp_path / 'c.yaml'}: cannot read file: not UTF-8 text (byte 0xff at offset 0)"),
                       (["--cluster", single24, "--placement", tmp_path / "p.yaml"],
                        f"{tmp_path / 'p.yaml'}: cannot read placement: not UTF-8 text (byte 0xe9 at offset 9)")):
        proc = subprocess.run([sys.executable, "-m", "vllm_helix.cli", "flow", *map(str, args)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip() == f"error: {said}; save it as UTF-8"


@pytest.mark.parametrize("text, message", [
    ("n0: [false, true]", r"p.yaml: n0: expected \[start, end\] layer indices, got \[False, True\]"),
    ("n0: [0.0, 2]", r"p.yaml: n0: expected \[start, end\] layer indices"),
    ("ghost: [0, 2]", r"p.yaml: unknown node 'ghost'"),
])
def test_a_bad_placement_mapping_names_the_file_and_node(tmp_path, text, message):
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(ClusterSpecError, match=message):
        load_placement(tmp_path / "p.yaml", reference_example("ilp").cluster)


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
