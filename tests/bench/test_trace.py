"""The hot-path trace summary (vllm_helix/trace.py): phases of a two-node chain from known timestamps."""

import json
import math
import subprocess
import sys

import pytest

from vllm_helix.trace import TRACE_ENV, format_summary, summarize, tracer


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _batch(node, step, arrived, start, end, sent, decodes=2, held=None, handed=None):
    """A node's trace row for one step of two sequences, times in ms."""
    ms = 1e-3
    return {"node": node, "arrived": {str(step): arrived * ms}, "model": [start * ms, end * ms],
            "sent": {str(step): sent * ms}, "held": {} if held is None else {str(step): held * ms},
            "handed": None if handed is None else handed * ms, "tokens": 2, "seqs": 2, "decodes": decodes}


def test_phases_of_a_two_node_chain(tmp_path):
    ms = 1e-3
    # step 0: coordinator queues it at 1 ms, node0 receives at 2 ms and computes 10-40 ms, sends at 41 ms;
    # node1 receives at 42 ms, computes 43-73 ms, sends tokens at 74 ms; the coordinator has them at 75 ms.
    # step 1 reaches node0 at 20 ms, while step 0 computes: it queues until 41 ms, computes 42-72 ms.
    _write(tmp_path / "coordinator.jsonl", [
        {"step": 0, "submit": 0.5 * ms, "sent": 1 * ms, "recv": [75 * ms], "done": 75.5 * ms, "requests": 2},
        {"step": 1, "submit": 18 * ms, "sent": 19 * ms, "recv": [110 * ms], "done": 111 * ms, "requests": 2},
    ])
    _write(tmp_path / "node0.jsonl", [
        {"node": "node0", "arrived": {"0": 2 * ms}, "model": [10 * ms, 40 * ms], "sent": {"0": 41 * ms},
         "tokens": 2, "seqs": 2},
        {"node": "node0", "arrived": {"1": 20 * ms}, "model": [42 * ms, 72 * ms], "sent": {"1": 73 * ms},
         "tokens": 2, "seqs": 2},
    ])
    _write(tmp_path / "node1.jsonl", [
        {"node": "node1", "arrived": {"0": 42 * ms}, "model": [43 * ms, 73 * ms], "sent": {"0": 74 * ms},
         "tokens": 2, "seqs": 2},
        {"node": "node1", "arrived": {"1": 74.5 * ms}, "model": [75 * ms, 105 * ms], "sent": {"1": 109 * ms},
         "tokens": 2, "seqs": 2},
    ])
    summary = summarize(tmp_path)
    node0, node1 = summary["nodes"]["node0"], summary["nodes"]["node1"]
    assert node0["in"] == pytest.approx(1.0)  # median of 1 ms (step 0) and 1 ms (step 1)
    assert node0["queue"] == pytest.approx(10.5)  # step 0 waited for nothing, step 1 21 ms for step 0
    assert node0["assembly"] == pytest.approx(4.5)  # 8 ms (2 -> 10) and 1 ms (41 -> 42)
    assert node0["compute"] == pytest.approx(30.0)
    assert node1["in"] == pytest.approx(1.25)  # 41 -> 42 and 73 -> 74.5
    assert node1["post"] == pytest.approx(2.5)  # 1 ms and 4 ms
    coordinator = summary["coordinator"]
    assert coordinator["build"] == pytest.approx(0.75) and coordinator["return"] == pytest.approx(1.0)
    assert math.isnan(coordinator["engine"])  # no batch had finished when either was submitted
    # per hop: node steps (in + assembly + post) 10, 3, 3, 6 ms; return legs (+ finish) 1.5, 2 ms
    assert summary["hop_overhead_ms"] == pytest.approx(3.0)
    assert "per-hop overhead" in format_summary(summary)


def test_the_decode_cycle_adds_up_one_chain_steps_and_leaves_out_prefills_and_parallel_routes(tmp_path):
    ms = 1e-3

    # step 0: no batch had finished before it (no engine segment); step 1: the measured cycle; step 2: a prefill;
    # step 3: both nodes at once (two routes), whose segments add up to more than its submit -> done
    _write(tmp_path / "coordinator.jsonl", [
        {"step": 0, "submit": 0, "sent": 1 * ms, "recv": [28 * ms], "done": 29 * ms, "requests": 2},
        {"step": 1, "submit": 30 * ms, "sent": 31 * ms, "recv": [59 * ms], "done": 60 * ms, "requests": 2},
        {"step": 2, "submit": 61 * ms, "sent": 62 * ms, "recv": [89 * ms], "done": 90 * ms, "requests": 2},
        {"step": 3, "submit": 100 * ms, "sent": 101 * ms, "recv": [115 * ms, 115 * ms], "done": 116 * ms,
         "requests": 2},
    ])
    _write(tmp_path / "node0.jsonl", [_batch("node0", 0, 2, 3, 13, 14), _batch("node0", 1, 32, 33, 43, 44),
                                      _batch("node0", 2, 63, 64, 74, 75, decodes=0),
                                      _batch("node0", 3, 102, 103, 113, 114)])
    _write(tmp_path / "node1.jsonl", [_batch("node1", 0, 15, 16, 26, 27), _batch("node1", 1, 45, 46, 56, 58),
                                      _batch("node1", 2, 76, 77, 87, 88, decodes=0),
                                      _batch("node1", 3, 102, 103, 113, 114)])
    summary = summarize(tmp_path)
    assert summary["cycle_steps"] == 1
    assert summary["cycle"] == pytest.approx({"engine": 1, "build": 1, "in": 2, "wait": 2, "compute": 20, "post": 3,
                                              "return": 1, "finish": 1})
    assert "= 31.00; the forwards are 65 % of it" in format_summary(summary)


def test_under_async_scheduling_a_held_steps_hop_is_its_tokens_and_the_ring_leaves_the_coordinator_out(tmp_path):
    ms = 1e-3

    # step 0 runs as a synchronous step would; node1 hands its tokens to node0 at 27 ms. Step 1 left the
    # coordinator at 3 ms, before step 0 was done, and waited at node0 from 4 ms for the token, which came at 27.5 ms.
    _write(tmp_path / "coordinator.jsonl", [
        {"step": 0, "submit": 0, "sent": 1 * ms, "recv": [28 * ms], "done": 29 * ms, "requests": 2},
        {"step": 1, "submit": 2 * ms, "sent": 3 * ms, "recv": [52 * ms], "done": 53 * ms, "requests": 2}])
    _write(tmp_path / "node0.jsonl", [_batch("node0", 0, 2, 3, 13, 14),
                                      _batch("node0", 1, 27.5, 28, 38, 39, held=4)])
    _write(tmp_path / "node1.jsonl", [_batch("node1", 0, 15, 16, 26, 27.5, handed=27),
                                      _batch("node1", 1, 39.5, 40, 50, 51.5, handed=51)])
    summary = summarize(tmp_path)
    node0 = summary["nodes"]["node0"]
    assert node0["in"] == pytest.approx(0.75)  # 1 ms (step 0) and 0.5 ms from the hand-over, not 24.5 from 3 ms
    assert node0["held"] == pytest.approx(11.75)  # 0 and 23.5 ms
    # node steps 3, 3.5, 2, 2.5 ms; return legs 1.5, 1.5 ms
    assert summary["hop_overhead_ms"] == pytest.approx(2.25)
    assert summary["cycle"] == {}  # step 0 had no batch done before it, step 1 started from a token
    assert summary["ring_steps"] == 1
    assert summary["ring"] == pytest.approx({"in": 1.0, "wait": 1.0, "compute": 20.0, "post": 2.5})
    assert "async ring, a last node's token to the next (mean ms over 1 decode steps): in 1.00" in (
        format_summary(summary))


def test_batches_without_their_shape_are_not_taken_for_decodes(tmp_path):
    ms = 1e-3
    _write(tmp_path / "coordinator.jsonl", [
        {"step": 0, "submit": 0, "sent": 1 * ms, "recv": [15 * ms], "done": 16 * ms, "requests": 2},
        {"step": 1, "submit": 17 * ms, "sent": 18 * ms, "recv": [32 * ms], "done": 33 * ms, "requests": 2}])
    _write(tmp_path / "node0.jsonl", [  # a trace from before nodes wrote "seqs" and "decodes"
        {"node": "node0", "arrived": {str(step): (t + 2) * ms}, "model": [(t + 3) * ms, (t + 13) * ms],
         "sent": {str(step): (t + 14) * ms}, "tokens": 2} for step, t in ((0, 0), (1, 17))])
    summary = summarize(tmp_path)
    assert summary["cycle"] == {} and summary["cycle_steps"] == 0
    assert "decode step cycle" not in format_summary(summary)


def test_steps_before_since_are_left_out_and_tracing_is_off_by_default(tmp_path, monkeypatch):
    _write(tmp_path / "coordinator.jsonl", [
        {"step": 0, "submit": 1.0, "sent": 1.001, "recv": [1.1], "done": 1.1, "requests": 1}])
    _write(tmp_path / "node0.jsonl", [
        {"node": "node0", "arrived": {"0": 1.002}, "model": [1.003, 1.09], "sent": {"0": 1.095},
         "tokens": 1, "seqs": 1}])
    assert summarize(tmp_path, since=2.0)["steps"] == 0
    assert summarize(tmp_path, since=0.5)["steps"] == 1
    monkeypatch.delenv(TRACE_ENV, raising=False)
    assert tracer("node0") is None
    monkeypatch.setenv(TRACE_ENV, str(tmp_path / "t"))
    trace = tracer("node0")
    trace.record({"a": 1})
    trace.close()
    assert json.loads((tmp_path / "t" / "node0.jsonl").read_text()) == {"a": 1}


def test_the_command_prints_the_table_or_says_what_is_missing(tmp_path):
    def command(*args):
        return subprocess.run([sys.executable, "-m", "vllm_helix.trace", *map(str, args)], capture_output=True,
                              text=True, timeout=60)

    empty = command(tmp_path)
    assert empty.returncode == 2 and "no coordinator.jsonl here" in empty.stderr and "Traceback" not in empty.stderr
    assert command().returncode == 2
    _write(tmp_path / "coordinator.jsonl", [
        {"step": 0, "submit": 1.0, "sent": 1.001, "recv": [1.1], "done": 1.1, "requests": 1}])
    _write(tmp_path / "node0.jsonl", [
        {"node": "node0", "arrived": {"0": 1.002}, "model": [1.003, 1.09], "sent": {"0": 1.095},
         "tokens": 1, "seqs": 1}])
    table = command(tmp_path)
    assert table.returncode == 0 and "node0" in table.stdout and "over 1 steps" in table.stdout, table.stdout


def test_lines_that_are_not_trace_rows_are_left_out_and_no_steps_is_an_error(tmp_path):
    def command(*args):
        return subprocess.run([sys.executable, "-m", "vllm_helix.trace", *map(str, args)], capture_output=True,
                              text=True, timeout=60)

    step = {"step": 0, "submit": 1.0, "sent": 1.001, "recv": [1.1], "done": 1.1, "requests": 1}
    batch = {"node": "node0", "arrived": {"0": 1.002}, "model": [1.003, 1.09], "sent": {"0": 1.095}, "tokens": 1}
    (tmp_path / "coordinator.jsonl").write_bytes(b"{}\n[1, 2]\n\"hello\"\n\xff\xfe\n")
    (tmp_path / "node0.jsonl").write_text(json.dumps({"node": "node0", "sent": {}}) + "\n")
    nothing = command(tmp_path)
    assert nothing.returncode == 2 and "no traced steps" in nothing.stderr and "Traceback" not in nothing.stderr
    with (tmp_path / "coordinator.jsonl").open("a") as out:
        out.write(json.dumps(step) + "\n")
    with (tmp_path / "node0.jsonl").open("a") as out:
        out.write(json.dumps(batch) + "\n")
    table = command(tmp_path)
    assert table.returncode == 0 and "over 1 steps" in table.stdout, table.stdout + table.stderr


STEP = {"step": 0, "submit": 1.0, "sent": 1.001, "recv": [1.1], "done": 1.1, "requests": 1}
BATCH = {"node": "node0", "arrived": {"0": 1.002}, "model": [1.003, 1.09], "sent": {"0": 1.095}, "tokens": 1}


@pytest.mark.parametrize("name, bad", [
    ("coordinator", {"submit": "x"}), ("coordinator", {"step": [1]}), ("coordinator", {"step": True}),
    ("coordinator", {"recv": 5}), ("coordinator", {"recv": ["x"]}), ("coordinator", {"done": None}),
    ("coordinator", {"cpu": "x"}), ("coordinator", {"sent": 10 ** 400}),
    ("node0", {"sent": [1]}), ("node0", {"arrived": {"x": 1.2}}), ("node0", {"arrived": None}),
    ("node0", {"arrived": {"0": "x"}}), ("node0", {"model": [1.25]}), ("node0", {"model": [1, "x"]}),
    ("node0", {"model": 3}), ("node0", {"cpu": [1]}), ("node0", {"step": [1]}), ("node0", {"held": [1]}),
    ("node0", {"held": {"0": None}}), ("node0", {"handed": "x"}),
])
def test_rows_whose_fields_have_other_types_are_left_out(tmp_path, name, bad):
    good = STEP if name == "coordinator" else BATCH
    _write(tmp_path / "coordinator.jsonl", [STEP] if name != "coordinator" else [])
    _write(tmp_path / "node0.jsonl", [BATCH] if name == "coordinator" else [])
    with (tmp_path / f"{name}.jsonl").open("a") as out:
        out.write(json.dumps({**good, **bad}) + "\n")
        out.write(json.dumps(good) + "\n")  # the good row after it still counts
    summary = summarize(tmp_path)
    assert summary["steps"] == 1 and summary["nodes"]["node0"]["compute"] == pytest.approx(87.0)


def test_lines_json_cannot_read_and_jsonl_entries_that_are_not_files_are_left_out(tmp_path):
    lines = ["1" * 5000, "[" * 100_000 + "]" * 100_000, json.dumps(STEP)]
    (tmp_path / "coordinator.jsonl").write_text("\n".join(lines) + "\n")
    _write(tmp_path / "node0.jsonl", [BATCH])
    (tmp_path / "b.jsonl").mkdir()
    (tmp_path / "gone.jsonl").symlink_to(tmp_path / "missing")
    summary = summarize(tmp_path)
    assert summary["steps"] == 1 and list(summary["nodes"]) == ["node0"]
