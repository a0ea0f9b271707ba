import json

import pytest

from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.model import BUILTIN_MODELS, load_model
from vllm_helix.units import parse_bandwidth, parse_duration, parse_size


@pytest.mark.parametrize(
    "text, expected",
    [("10Gbps", 1.25e9), ("1.25GB/s", 1.25e9), ("100Mbps", 12.5e6), ("1GiB/s", 2**30), ("800kbps", 1e5)],
)
def test_bandwidth_units_are_explicit(text, expected):
    assert parse_bandwidth(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["10", "10 furlongs", "1gb/s", "-5Gbps", "fast", ""])
def test_bad_bandwidth_is_rejected_with_a_hint(bad):
    with pytest.raises(ValueError, match="bandwidth"):
        parse_bandwidth(bad)


@pytest.mark.parametrize(
    "parse, text",
    [(parse_bandwidth, "1e400Gbps"), (parse_bandwidth, "1e400B/s"), (parse_size, "1e400GB"), (parse_size, "1e300TB"),
     (parse_duration, "1e400s"), (parse_duration, "1e307min")],
)
def test_numbers_past_what_a_float_holds_are_out_of_range(parse, text):
    with pytest.raises(ValueError, match=f"'{text}' is out of range"):  # not inf, which overflowed the planner
        parse(text)


@pytest.mark.parametrize("parse", [parse_bandwidth, parse_size, parse_duration])
@pytest.mark.parametrize("text", ["infGbps", "nanGB", "inf", True])
def test_non_numbers_are_not_quantities(parse, text):
    with pytest.raises(ValueError):
        parse(text)


def test_sizes_and_durations():
    assert parse_size("24GiB") == 24 * 2**30
    assert parse_size("16GB") == 16e9
    assert parse_duration("1ms") == pytest.approx(1e-3)
    assert parse_duration("50 us") == pytest.approx(5e-5)
    with pytest.raises(ValueError):
        parse_duration(3)


def test_builtin_models_match_the_reference_constants():
    llama70 = load_model("llama2-70b")
    assert (llama70.num_layers, llama70.layer_bytes, llama70.activation_bytes_per_token) == (80, 1.53e9, 16384)
    llama30 = BUILTIN_MODELS["llama1-30b"]
    assert (llama30.num_layers, llama30.layer_bytes, llama30.activation_bytes_per_token) == (60, 1e9, 13312)


def test_model_from_hugging_face_config(tmp_path):
    config = {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 8192, "intermediate_size": 28672,
        "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "torch_dtype": "float16",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = load_model(tmp_path)
    assert model.num_layers == 80
    # LLaMA-2-70B has ~856M parameters per layer: 1.71 GB in fp16 (the reference rounded to 1.53 GB).
    assert model.layer_bytes == pytest.approx(1.712e9, rel=0.01)
    # a hop carries the (hidden, residual) pair in fp16: 2 x 8192 x 2 bytes (float32: one summed tensor)
    assert model.activation_bytes_per_token == 32768
    config["torch_dtype"] = "float32"
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_model(tmp_path).activation_bytes_per_token == 32768
    assert model.kv_bytes_per_token_layer == 2 * 8 * 128 * 2


def test_model_errors_name_the_problem(tmp_path):
    with pytest.raises(ClusterSpecError, match="not a built-in"):
        load_model("no-such-model")
    (tmp_path / "config.json").write_text('{"hidden_size": 64}')
    with pytest.raises(ClusterSpecError, match="num_hidden_layers"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ClusterSpecError, match="cannot read model config"):
        load_model(tmp_path)
