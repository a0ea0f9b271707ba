"""Trace generator check values (helix-spec §6.5) and user-trace parsing."""

from __future__ import annotations

import random

import pytest

from vllm_helix.errors import ClusterSpecError
from vllm_helix.sim.workload import LengthSampler, generate_trace, load_trace


def test_online_trace_700_tok_s_matches_reference():
    trace = generate_trace(700, 1800, start_s=20, seed=0)
    assert len(trace) == 1293
    assert sum(a.input_tokens for a in trace) == 947_533
    assert sum(a.output_tokens for a in trace) == 291_752
    assert sum(a.input_tokens + a.output_tokens for a in trace) / 1800 == pytest.approx(688.49, abs=0.005)
    first = [(round(a.time_s, 4), a.input_tokens, a.output_tokens) for a in trace[:3]]
    assert first == [(21.2617, 405, 103), (22.2739, 120, 12), (25.4896, 1039, 401)]


def test_online_trace_300_tok_s_matches_reference():
    trace = generate_trace(300, 300, start_s=0, seed=0)
    assert len(trace) == 87
    assert sum(a.input_tokens + a.output_tokens for a in trace) / 300 == pytest.approx(278.54, abs=0.005)
    first = [(round(a.time_s, 4), a.input_tokens, a.output_tokens) for a in trace[:3]]
    assert first == [(2.2739, 420, 124), (3.7768, 120, 12), (8.7547, 388, 84)]


def test_offline_sampler_first_lengths():
    sampler = LengthSampler("azure_conv", random.Random(0))
    assert [sampler.sample() for _ in range(5)] == [(194, 96), (420, 124), (1136, 375), (405, 103), (120, 12)]


def test_generator_leaves_global_random_alone():
    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate_trace(300, 30, seed=0)
    assert random.random() == expected


def test_duration_must_be_a_multiple_of_three():
    with pytest.raises(ClusterSpecError, match="multiple of 3"):
        generate_trace(300, 10)


def test_user_trace_csv_and_jsonl(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("arrival_time_s,input_tokens,output_tokens\n1.5,10,2\n0.5,20,3\n")
    assert [(a.time_s, a.input_tokens) for a in load_trace(csv)] == [(0.5, 20), (1.5, 10)]
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"arrival_time_s": 0, "input_tokens": 5, "output_tokens": 1}\n')
    assert load_trace(jl)[0].output_tokens == 1


@pytest.mark.parametrize("body, message", [
    ("arrival_time_s,input_tokens,output_tokens\n1.0,ten,2\n", r"t.csv:2: .*must be numbers"),
    ("arrival_time_s,input_tokens,output_tokens\n1.0,0,2\n", r"t.csv:2: need .*>= 1"),
    ("time_x,input_tokens,output_tokens\n1.0,3,2\n", r"missing arrival_time_s"),
    ("arrival_time_s,input_tokens,output_tokens\n", r"no requests"),
])
def test_bad_trace_rows_are_clear_errors(tmp_path, body, message):
    path = tmp_path / "t.csv"
    path.write_text(body)
    with pytest.raises(ClusterSpecError, match=message):
        load_trace(path)


@pytest.mark.parametrize("body, message", [
    ("arrival_time_s,input_tokens,output_tokens\nnan,5,5\n", r"t.csv:2: arrival_time_s: need a finite arrival time"),
    ("arrival_time_s,input_tokens,output_tokens\ninf,5,5\n", r"t.csv:2: arrival_time_s: need a finite arrival time"),
    ("arrival_time_s,input_tokens,output_tokens\n-inf,5,5\n", r"t.csv:2: arrival_time_s: need a finite arrival time"),
    ("arrival_time_s,input_tokens,output_tokens\n0,1.5,5\n", r"t.csv:2: input_tokens: token counts must be numbers"),
    ("arrival_time_s,input_tokens,output_tokens\n0,5\n", r"t.csv:2: missing output_tokens"),
    ("arrival_time_s,input_tokens,output_tokens\n0,5,5\n1,5,5,9\n", r"t.csv:3: more fields than the header's 3"),
    ("arrival_time_s,input_tokens,input_tokens\n0,5,5\n", r"t.csv:1: a column is named twice"),
    ('arrival_time_s,input_tokens,output_tokens\n0,5,"' + "9" * 200_000 + '"\n', r"t.csv:2: not CSV: field larger"),
])
def test_csv_rows_need_finite_times_and_whole_token_counts(tmp_path, body, message):
    path = tmp_path / "t.csv"
    path.write_text(body)
    with pytest.raises(ClusterSpecError, match=message):
        load_trace(path)


@pytest.mark.parametrize("row, message", [
    ('{"arrival_time_s": "NaN", "input_tokens": 5, "output_tokens": 5}', "arrival_time_s: need a finite"),
    ('{"arrival_time_s": NaN, "input_tokens": 5, "output_tokens": 5}', "arrival_time_s: need a finite"),
    ('{"arrival_time_s": 1e999, "input_tokens": 5, "output_tokens": 5}', "arrival_time_s: need a finite"),
    ('{"arrival_time_s": true, "input_tokens": 5, "output_tokens": 5}', "arrival_time_s: arrival times must be"),
    ('{"arrival_time_s": [0], "input_tokens": 5, "output_tokens": 5}', "arrival_time_s: arrival times must be"),
    ('{"arrival_time_s": 0, "input_tokens": true, "output_tokens": 5}', "input_tokens: token counts must be"),
    ('{"arrival_time_s": 0, "input_tokens": 5, "output_tokens": 2.5}', "output_tokens: token counts must be"),
    ('{"arrival_time_s": 0, "input_tokens": 5, "output_tokens": null}', "missing output_tokens"),
    ('{"arrival_time_s": 1' + "0" * 400 + ', "input_tokens": 5, "output_tokens": 5}', "arrival_time_s: arrival times"),
    ("[" * 100_000 + "]" * 100_000, r"not a JSON object: nested too deeply"),
])
def test_jsonl_rows_need_finite_times_and_whole_token_counts_not_bools(tmp_path, row, message):
    path = tmp_path / "t.jsonl"
    path.write_text(row + "\n")
    with pytest.raises(ClusterSpecError, match=f"t.jsonl:1: {message}"):
        load_trace(path)


def test_whole_float_token_counts_read_as_ints(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"arrival_time_s": 1, "input_tokens": 5.0, "output_tokens": 2}\n')
    assert load_trace(path)[0].input_tokens == 5


def test_a_trace_that_is_not_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("arrival_time_s,input_tokens,output_tokens\n0,5,5\n".encode("utf-16"))
    with pytest.raises(ClusterSpecError, match="t.csv: cannot read trace: not UTF-8 text"):
        load_trace(path)


def test_a_row_check_reports_the_row(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_time_s,input_tokens,output_tokens\n0,5,5\n1,500,5\n")
    with pytest.raises(ClusterSpecError, match="t.csv:3: too long"):
        load_trace(path, lambda a: "too long" if a.input_tokens > 100 else None)
