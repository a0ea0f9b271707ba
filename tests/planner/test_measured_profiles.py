"""Measured profiles without an engine: bad files get one-line errors, per-node sources in mixed clusters,
the fit behind `vllm-helix profile`. (The real profile of the tiny model: tests/serving/test_observe.py.)"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from vllm_helix.cli import main
from vllm_helix.errors import ClusterSpecError
from vllm_helix.node.config import WorkerConfig
from vllm_helix.planner.profiles import bundled_gpu_types
from vllm_helix.profiling.measure import Memory, Timings
from vllm_helix.profiling.profile_file import fit_line, profile_document
from vllm_helix.profiling.sweep import FULL, QUICK

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = {"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 4, "intermediate_size": 688,
               "num_key_value_heads": 2, "torch_dtype": "float32"}


def _line(overhead: float, per_layer: dict[int, float]) -> dict[tuple[int, int], float]:
    return {(k, x): overhead + k * s for x, s in per_layer.items() for k in (1, 4, 7)}


def synthetic_profile(model: str, gpu: str) -> dict:
    """A profile document from timings that follow the model exactly (2 ms per batch + k layers)."""
    timings = Timings(prompt=_line(2e-3, {16: 1e-4, 256: 1e-3}),
                      decode={(k, 64, d): 2e-3 + k * 5e-5 * d for k in (1, 4, 7) for d in (1, 8)})
    memory = Memory(available_bytes=8 << 30, layer_weight_bytes=2.4e6, kv_bytes_per_token_layer=2048)
    return profile_document(model=model, gpu=gpu, timings=timings, memory=memory, sweep=QUICK, total_layers=8,
                            most_layers=8, config=WorkerConfig(), fraction=0.05, metadata={"date": "test"})


@pytest.fixture(autouse=True)
def own_registry(monkeypatch):
    """Measured profiles registered by a test (in-process CLI runs) stay with that test."""
    from vllm_helix.planner import profiles

    monkeypatch.setattr(profiles, "_MEASURED", {})


@pytest.fixture
def tiny_model(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    return folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_fit_recovers_overhead_and_per_layer_time():
    overhead, slope = fit_line([(1, 0.003), (4, 0.006), (7, 0.009)])
    assert overhead == pytest.approx(0.002) and slope == pytest.approx(0.001)
    assert fit_line([(3, 0.009)]) == (0.0, pytest.approx(0.003))  # one layer count: all of it per layer
    assert fit_line([(1, 0.005), (7, 0.004)])[1] > 0  # noise never makes a layer free


def test_a_synthetic_profile_document_reads_back_with_its_overhead(tmp_path):
    from vllm_helix.planner.profiles import load_profile_file

    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(synthetic_profile("tiny", "cpu")))
    profile = load_profile_file(path)
    assert profile.step_overhead_s == pytest.approx(2e-3)
    assert profile.prompt_latency(256) == pytest.approx(1e-3) and profile.decode_latency(8) == pytest.approx(4e-4)
    assert profile.prompt_latency(512) == pytest.approx(1e-3 + 256 * 0.9e-3 / 240)  # the last segment, extended
    assert profile.kv_slots(2) == int(0.05 * (8 << 30) / (2 * 2048)) // 16 * 16 * 2


def test_sampling_lost_in_the_noise_still_makes_a_profile_that_loads(tmp_path):
    """`vllm-helix profile` times the last range's sampling as a difference of two steps; on a tiny model and a busy
    machine it can come out zero or negative, which a profile must not say (CI once wrote 0 ms at 1 sequence)."""
    from vllm_helix.planner.profiles import load_profile_file

    timings = Timings(prompt=_line(2e-3, {16: 1e-4, 256: 1e-3}),
                      decode={(k, 64, d): 2e-3 + k * 5e-5 * d for k in (1, 4, 7) for d in (1, 8)},
                      sampling={1: 0.0, 4: -3e-6, 8: 2e-4})
    document = profile_document(model="tiny", gpu="cpu", timings=timings, memory=Memory(8 << 30, 2.4e6, 2048),
                                sweep=QUICK, total_layers=8, most_layers=8, config=WorkerConfig(), fraction=0.05,
                                metadata={"date": "test"})
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(document))
    profile = load_profile_file(path)
    assert 0 < profile.sampling_seconds(1) < 1e-6 and profile.sampling_seconds(8) == pytest.approx(2e-4)


def by_context_profile(model: str, gpu: str) -> dict:
    """Decodes cost 50 us per sequence and layer with 64 tokens cached, three times that with 512."""
    document = synthetic_profile(model, gpu)
    timings = Timings(prompt=_line(2e-3, {16: 1e-4, 256: 1e-3}),
                      decode={(k, c, d): 2e-3 + k * 5e-5 * d * (1 if c == 64 else 3)
                              for k in (1, 4, 7) for c in (64, 512) for d in (1, 8)})
    return profile_document(model=model, gpu=gpu, timings=timings, memory=Memory(8 << 30, 2.4e6, 2048),
                            sweep=QUICK, total_layers=8, most_layers=8, config=WorkerConfig(), fraction=0.05,
                            metadata=document["metadata"])


def test_decodes_take_the_time_of_their_context_between_the_timed_ones():
    from vllm_helix.planner.profiles import load_profile, profile_from_dict

    profile = profile_from_dict(by_context_profile("tiny", "cpu"), "test")
    assert profile.decode_seconds(8, 64) == pytest.approx(4e-4)
    assert profile.decode_seconds(8, 512) == pytest.approx(12e-4)
    assert profile.decode_seconds(8, 288) == pytest.approx(8e-4)  # half-way
    assert profile.decode_seconds(8, 10) == pytest.approx(4e-4)  # the nearest timed context beyond them
    assert profile.decode_seconds(8, 4000) == pytest.approx(12e-4)
    assert profile.decode_seconds(8) == profile.decode_latency(8) == pytest.approx(12e-4)  # the middle table
    bundled = load_profile("llama2_70b", "A100")  # one decode table: the context changes nothing
    assert bundled.decode_seconds(8, 100) == bundled.decode_latency(8)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(prompt_layer_ms=[[1, 0.0], [256, 0.0]]), "prompt_layer_ms: zero latency: 0 ms at x = 1"),
    (lambda d: d.update(decode_layer_ms=[[1, -1.0], [8, 1.0]]), "decode_layer_ms: negative latency"),
    (lambda d: d.update(prompt_layer_ms=[[16, 0.1], [16, 0.2]]), "prompt_layer_ms: x (batch size) must be"),
    (lambda d: d.update(prompt_layer_ms=[[-1, 0.1], [16, 0.2]]), "prompt_layer_ms: x (batch size) must be >= 0"),
    (lambda d: d.update(prompt_layer_ms=[[1, math.nan], [16, 0.2]]), "prompt_layer_ms[0][1] (ms): expected a finite"),
    (lambda d: d.update(prompt_layer_ms=[[1, True], [16, 0.2]]), "prompt_layer_ms[0][1] (ms): expected a finite"),
    (lambda d: d.update(prompt_layer_ms=[[1, 0.1, 3], [16, 0.2]]), "prompt_layer_ms: expected a list of [x, ms] rows"),
    (lambda d: d.update(prompt_layer_ms="fast"), "prompt_layer_ms: expected a list of [x, ms] rows"),
    (lambda d: d["vllm_num_blocks"].update({"1": -5}),
     "vllm_num_blocks[1]: expected an integer in 1..16777216, got -5"),
    (lambda d: d["prompt_max_requests"].update({"1": 0}), "prompt_max_requests[1]: expected an integer in 1..16777216"),
    (lambda d: d["decode_max_tokens"].update({"2": 1.5}), "decode_max_tokens[2]: expected an integer in 1..16777216"),
    (lambda d: d.update(vllm_num_blocks=[1]), "vllm_num_blocks: expected a layers -> count mapping"),
    (lambda d: d.update(max_num_layers=True), "max_num_layers: expected an integer in 1..10000, got True"),
    (lambda d: d.update(max_num_layers=0), "max_num_layers: expected an integer in 1..10000, got 0"),
    (lambda d: d.update(step_overhead_ms=float("inf")), "step_overhead_ms: expected a finite number"),
    (lambda d: d.update(measured="yes"), "measured: expected true or false, got 'yes'"),
])
def test_profile_values_are_finite_positive_and_x_strictly_increasing(change, message):
    from vllm_helix.planner.profiles import profile_from_dict

    doc = synthetic_profile("tiny", "cpu")
    change(doc)
    with pytest.raises(ClusterSpecError) as caught:
        profile_from_dict(doc, "p.json")
    assert str(caught.value).startswith(f"p.json: {message}"), caught.value


def test_a_profile_must_be_a_mapping():
    from vllm_helix.planner.profiles import profile_from_dict, register_measured

    for read in (profile_from_dict, register_measured):
        with pytest.raises(ClusterSpecError, match="p.json: not a profile"):
            read("abc", "p.json")


def simulated_seconds(tmp_path, tiny_model, capsys, document: dict, name: str) -> float:
    """Plan the local 3-node chain from `document` and simulate 8 short requests at once: seconds to the last."""
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_time_s,input_tokens,output_tokens\n" + "0.0,16,40\n" * 8)
    profiles = tmp_path / f"profiles-{name}"
    profiles.mkdir()
    (profiles / "cpu.json").write_text(json.dumps(document))
    plan = tmp_path / f"plan-{name}.yaml"
    code, _, err = run(capsys, "plan", "--cluster", ROOT / "examples/local3-cluster.yaml", "--model", tiny_model,
                       "--profiles", profiles, "--placement", ROOT / "examples/local3-placement.yaml", "-o", plan)
    assert code == 0, err
    code, out, err = run(capsys, "simulate", "--plan", plan, "--cluster", ROOT / "examples/local3-cluster.yaml",
                         "--mode", "online", "--trace", trace, "--json", "--helix-depth", "0")
    assert code == 0, err
    report = json.loads(out)
    assert report["queries"]["finished"] == 8
    return report["last_finish_s"] - report["window_s"][0]


def test_the_simulator_times_decodes_at_their_context(tmp_path, tiny_model, capsys):
    """Short sequences on a profile whose decodes are 3x slower at 512 tokens cached than at 64: with the
    per-context tables they run at the 64-token speed, without them at the one table's (512)."""
    document = by_context_profile("tiny", "cpu")
    with_tables = simulated_seconds(tmp_path, tiny_model, capsys, document, "contexts")
    del document["decode_layer_ms_by_context"]
    assert with_tables < 0.8 * simulated_seconds(tmp_path, tiny_model, capsys, document, "one-table")


def test_the_last_node_pays_for_sampling_and_only_it(tmp_path, tiny_model, capsys):
    from vllm_helix.coordinator.drift import Expectation, Work
    from vllm_helix.planner.files import load_plan

    document = by_context_profile("tiny", "cpu")
    without = simulated_seconds(tmp_path, tiny_model, capsys, document, "without")
    document["sampling_ms"] = [[0, 0.0], [1, 5.0], [8, 5.0]]  # 5 ms a batch
    # 40 output tokens: at least 40 batches on node-c, each 5 ms longer; node-a and node-b never wait for it
    assert simulated_seconds(tmp_path, tiny_model, capsys, document, "with") >= without + 40 * 5e-3 - 1e-9
    plan = load_plan(tmp_path / "plan-with.yaml")
    batch = Work(batches=1, tokens=8, decode_seqs=8)
    assert Expectation(plan, "node-c").seconds(batch) - Expectation(plan, "node-b").seconds(batch) == \
        pytest.approx(5e-3)  # both hold 3 layers; the drift check expects the last one's sampling too


def test_plan_uses_measured_profiles_where_they_cover_and_says_so_per_node(tmp_path, tiny_model, capsys):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "cpu.json").write_text(json.dumps(synthetic_profile("tiny", "cpu")))
    cluster = yaml.safe_load((ROOT / "examples/local3-cluster.yaml").read_text())
    cluster["nodes"][2]["gpu"] = "H100"  # not profiled: the data-sheet estimate
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(cluster))
    code, out, err = run(capsys, "plan", "--cluster", tmp_path / "cluster.yaml", "--model", tiny_model, "--profiles",
                         profiles, "--placement", ROOT / "examples/local3-placement.yaml", "-o", tmp_path / "plan.yaml")
    assert code == 0, err
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.startswith("node-")}
    assert rows == {"node-a": "measured", "node-b": "measured", "node-c": "estimate"}
    plan = yaml.safe_load((tmp_path / "plan.yaml").read_text())
    assert plan["throughput_model"] == "measured" and [p["gpu"] for p in plan["profiles"]] == ["cpu"]
    # flow reports the same sources; without --profiles the same cluster is all estimate
    code, out, _ = run(capsys, "flow", "--cluster", tmp_path / "cluster.yaml", "--model", tiny_model, "--profiles",
                       profiles, "--placement", tmp_path / "plan.yaml", "--json")
    assert [n["throughput_source"] for n in json.loads(out)["nodes"]] == ["measured", "measured", "estimate"]


def test_measured_capacity_is_the_profiles_batch_time(tmp_path, tiny_model, capsys):
    """T(k) = tokens / (overhead + k * (prompt(750) + decode(32))): the planner's fixed batch on the profile."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "cpu.json").write_text(json.dumps(synthetic_profile("tiny", "cpu")))
    code, out, err = run(capsys, "flow", "--cluster", ROOT / "examples/local3-cluster.yaml", "--model", tiny_model,
                         "--profiles", profiles, "--placement", ROOT / "examples/local3-placement.yaml", "--json")
    assert code == 0, err
    capacity = {n["name"]: n["capacity_tokens_per_s"] for n in json.loads(out)["nodes"]}
    prompt = 1e-3 + (750 - 256) * (1e-3 - 1e-4) / (256 - 16)  # extrapolated
    decode = 5e-5 * 8 + (32 - 8) * 5e-5  # 50 us per sequence
    assert capacity["node-b"] == pytest.approx(782 / (2e-3 + 3 * (prompt + decode)), rel=1e-6)


def test_a_noisy_measured_table_that_falls_at_its_end_is_not_extrapolated_below_its_last_row():
    from vllm_helix.planner.profiles import LatencyTable

    noisy = LatencyTable((16.0, 64.0), (0.336, 0.020), extrapolate=True)  # a slow first row, on a busy host
    assert noisy(64.0) == 0.020 and noisy(10_000.0) == 0.020  # held (extrapolated, it went negative)
    rising = LatencyTable((16.0, 64.0), (0.010, 0.020), extrapolate=True)
    assert rising(112.0) == pytest.approx(0.030)


BAD = {
    "malformed.json": ('{"model": "tiny",', "cannot read profile"),
    "array.json": ("[1, 2]", "not a profile"),
    "latin1.json": ('{"model": "caf\u00e9"}'.encode("latin-1"), "cannot read profile: not UTF-8 text (byte 0xe9"),
    "missing.json": (json.dumps({"model": "tiny", "gpu": "cpu", "measured": True}), "missing field 'max_num_layers'"),
    "negative.json": (None, "negative latency"),
    "bundled.json": (None, "not a measured profile"),
    "context.json": (None, "decode_layer_ms_by_context[64]: needs at least two rows"),
    "contexts.json": (None, "decode_layer_ms_by_context: expected a context -> table mapping"),
    "zerolat.json": (None, "prompt_layer_ms: zero latency"),
    "slowlat.json": (None, "decode_layer_ms: 1e+300 ms at x = 8: a layer takes at most an hour (3.6e+06 ms)"),
    "xdup.json": (None, "prompt_layer_ms: x (batch size) must be >= 0 and differ from row to row"),
    "inflat.json": (None, "decode_layer_ms[1][1] (ms): expected a finite number, got inf"),
    "blocks0.json": (None, "vllm_num_blocks[1]: expected an integer in 1..16777216, got 0"),
    # what crashed or hung the reader: Python's integer limit, a digit int() refuses, a billion-layer table
    "bigint.json": ('{"measured": true, "max_num_layers": 1' + "0" * 5000 + "}",
                    "cannot read profile: not valid JSON (Exceeds the limit"),
    "superscript.json": (None, "vllm_num_blocks: key: expected an integer in 1..16777216, got '\u00b2'"),
    "layers.json": (None, "max_num_layers: expected an integer in 1..10000, got 1000000000000"),
}
# (field, change) of the synthetic document behind the names above
CHANGES = {
    "zerolat.json": lambda doc: doc.update(prompt_layer_ms=[[x, 0.0] for x, _ in doc["prompt_layer_ms"]]),
    "xdup.json": lambda doc: doc.update(prompt_layer_ms=[[1, 0.1], [1, 0.2]]),
    "inflat.json": lambda doc: doc.update(decode_layer_ms=[[1, 0.1], [8, float("inf")]]),
    "slowlat.json": lambda doc: doc.update(decode_layer_ms=[[1, 0.1], [8, 1e300]]),
    "blocks0.json": lambda doc: doc["vllm_num_blocks"].update({"1": 0}),
    "superscript.json": lambda doc: doc["vllm_num_blocks"].update({"\u00b2": 1}),
    "layers.json": lambda doc: doc.update(max_num_layers=10**12),
}


@pytest.mark.parametrize("name", sorted(BAD))
@pytest.mark.parametrize("command", ["plan", "flow", "simulate"])
def test_bad_profile_files_are_one_line_errors(tmp_path, tiny_model, capsys, name, command):
    folder = tmp_path / "profiles"
    folder.mkdir()
    text, message = BAD[name]
    if name == "negative.json":
        doc = synthetic_profile("tiny", "cpu")
        doc["decode_layer_ms"][1][1] = -1.0
        text = json.dumps(doc)
    if name in ("context.json", "contexts.json"):
        doc = synthetic_profile("tiny", "cpu")
        doc["decode_layer_ms_by_context"] = {"64": [[0, 0.0]]} if name == "context.json" else [[0, 0.0]]
        text = json.dumps(doc)
    if name in CHANGES:
        doc = synthetic_profile("tiny", "cpu")
        CHANGES[name](doc)
        text = json.dumps(doc)
    if name == "bundled.json":
        shutil.copy(ROOT / "vllm_helix/data/profiles/llama2_70b_A100.json", folder / name)
    elif isinstance(text, bytes):
        (folder / name).write_bytes(text)
    else:
        (folder / name).write_text(text)
    common = ["--cluster", ROOT / "examples/local3-cluster.yaml", "--model", tiny_model, "--profiles", folder]
    placement = ROOT / "examples/local3-placement.yaml"
    argv = {"plan": ["plan", *common, "--placement", placement, "-o", tmp_path / "p.yaml"],
            "flow": ["flow", *common, "--placement", placement],
            "simulate": ["simulate", *common, "--plan", placement]}[command]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


@pytest.mark.parametrize("make, message", [(lambda d: None, "not a directory"), (lambda d: d.mkdir(), "no *.json")])
def test_a_profiles_folder_that_is_missing_or_empty_is_an_error(tmp_path, tiny_model, capsys, make, message):
    make(tmp_path / "p")
    code, _, err = run(capsys, "plan", "--cluster", ROOT / "examples/local3-cluster.yaml", "--model", tiny_model,
                       "--profiles", tmp_path / "p", "-o", tmp_path / "plan.yaml")
    assert code == 2 and err.count("\n") == 1 and message in err


def test_profile_refuses_a_device_this_build_cannot_run(tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # --device cuda:N sets it; restored after the test
    code, _, err = run(capsys, "profile", "--model", tiny_model, "--device", "tpu", "-o", tmp_path / "x.json")
    assert code == 2 and "--device must be cpu or cuda:N" in err
    code, _, err = run(capsys, "profile", "--model", tiny_model, "--device", "cuda:0", "-o", tmp_path / "x.json")
    assert code == 2 and err.count("\n") == 1 and "cuda:0" in err
    assert "cpu" not in bundled_gpu_types("llama2_70b")  # measured profiles never leak into the bundled set


def test_the_sweep_fits_the_models_context_and_a_model_too_short_is_a_one_line_error(tmp_path, tiny_model, capsys):
    fitted = FULL.within(2048)  # the full sweep's 2048-token prompt does not fit a 2048-position model
    assert max(fitted.prompt_tokens) == 1024 and fitted.longest_sequence() <= 2048 and FULL.within(None) is FULL
    config = json.loads((Path(tiny_model) / "config.json").read_text())
    short = tmp_path / "short"
    shutil.copytree(tiny_model, short)
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 12}))
    code, _, err = run(capsys, "profile", "--model", short, "-o", tmp_path / "x.json")
    assert code == 2 and err.count("\n") == 1 and "at most 12 tokens" in err
