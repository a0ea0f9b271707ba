"""Model descriptions: Hugging Face config.json shapes and a plan's `model:` mapping are checked field by field."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest

from vllm_helix.errors import ClusterSpecError
from vllm_helix.planner.model import BUILTIN_MODELS, load_model, model_from_dict, model_from_hf_config

BASE = {"hidden_size": 256, "num_hidden_layers": 8, "num_attention_heads": 4, "intermediate_size": 688}


def test_a_multimodal_wrapper_reads_its_text_config_and_a_null_one_the_top():
    wrapped = model_from_hf_config({"text_config": BASE, "vision_config": {}}, "m")
    assert wrapped == model_from_hf_config(BASE, "m") == model_from_hf_config({**BASE, "text_config": None}, "m")


def test_optional_sizes_default_when_absent_or_null():
    plain = model_from_hf_config(BASE, "m")
    assert model_from_hf_config({**BASE, "head_dim": None, "num_key_value_heads": None}, "m") == plain
    assert model_from_hf_config({**BASE, "num_local_experts": 0}, "m") == plain
    moe = model_from_hf_config({**BASE, "num_experts": 8}, "m")
    assert moe.layer_bytes > plain.layer_bytes


@pytest.mark.parametrize("config, message", [
    ([], "not a model config (expected a JSON object, got list)"),
    ("llama", "not a model config (expected a JSON object, got str)"),
    ({"text_config": "x"}, "text_config: expected an object, got 'x'"),
    ({"text_config": [1]}, "text_config: expected an object"),
    ({**BASE, "head_dim": "x"}, "head_dim: must be a positive integer, got 'x'"),
    ({**BASE, "head_dim": math.nan}, "head_dim: must be a positive integer, got nan"),
    ({**BASE, "head_dim": 64.0}, "head_dim: must be a positive integer"),
    ({**BASE, "num_experts": "8"}, "num_experts: must be a positive integer, got '8'"),
    ({**BASE, "num_local_experts": -1}, "num_local_experts: must be a positive integer"),
    ({**BASE, "hidden_size": True}, "hidden_size: must be a positive integer, got True"),
    ({**BASE, "num_key_value_heads": -2}, "num_key_value_heads: must be a positive integer, got -2"),
    ({**BASE, "num_key_value_heads": False}, "num_key_value_heads: must be a positive integer"),
    # sizes past any model (a 400-digit hidden_size overflowed the layer's bytes into a traceback)
    ({**BASE, "hidden_size": 10**400},
     "hidden_size: must be at most 16777216, got 100000000000000000...0000000000000000000"),
    ({**BASE, "num_hidden_layers": 10**6}, "num_hidden_layers: must be at most 10000, got 1000000"),
    ({k: v for k, v in BASE.items() if k != "hidden_size"}, "hidden_size: required positive integer, got None"),
    ({**BASE, "hidden_size": 2}, "hidden_size 2 < num_attention_heads 4"),
])
def test_malformed_hf_configs_are_errors_naming_the_field(config, message):
    with pytest.raises(ClusterSpecError, match=f"^cfg: {re.escape(message)}"):
        model_from_hf_config(config, "m", source="cfg")


@pytest.mark.parametrize("content, message", [
    (b"[1, 2]", "not a model config"),
    (b'{"hidden_size": 1,', "cannot read model config"),
    ('{"hidden_size": "caf\u00e9"}'.encode("latin-1"), "cannot read model config: not UTF-8 text"),
    (json.dumps(BASE).encode("utf-16"), "cannot read model config: not UTF-8 text"),
    # Python's own limits, which json.loads raises as ValueError and RecursionError
    (b'{"hidden_size": 1' + b"0" * 5000 + b"}", r"cannot read model config: not valid JSON \(Exceeds the limit"),
    (b"[" * 100_000 + b"]" * 100_000, r"cannot read model config: not valid JSON \(nested too deeply\)"),
])
def test_load_model_reports_unreadable_config_files(tmp_path, content, message):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ClusterSpecError, match=message):
        load_model(tmp_path)


def test_a_plans_model_mapping_round_trips():
    for model in BUILTIN_MODELS.values():
        assert model_from_dict(dataclasses.asdict(model), "p") == model


@pytest.mark.parametrize("change, message", [
    ({"layer_bytes": "big"}, r"p: model.layer_bytes: must be a positive finite number of bytes, got 'big'"),
    ({"layer_bytes": -1.0}, r"p: model.layer_bytes: must be a positive finite number"),
    ({"layer_bytes": math.inf}, r"p: model.layer_bytes: must be a positive finite number"),
    ({"activation_bytes_per_token": -5}, r"p: model.activation_bytes_per_token: must be a positive integer"),
    ({"num_layers": "80"}, r"p: model.num_layers: must be a positive integer, got '80'"),
    ({"num_layers": 10**12}, r"p: model.num_layers: must be at most 10000, got 1000000000000"),
    ({"num_layers": 0}, r"p: model.num_layers: must be a positive integer"),
    ({"hidden_size": True}, r"p: model.hidden_size: must be a positive integer"),
    ({"kv_bytes_per_token_layer": -1}, r"p: model.kv_bytes_per_token_layer: must be an integer >= 0"),
    ({"max_context": 0}, r"p: model.max_context: must be a positive integer"),
    ({"profile_name": 7}, r"p: model.profile_name: must be a string or null"),
    ({"name": ""}, r"p: model.name: must be a non-empty string"),
    ({"foo": 1}, r"p: model: unknown field\(s\) foo"),
])
def test_a_plans_model_mapping_is_checked_field_by_field(change, message):
    data = {**dataclasses.asdict(BUILTIN_MODELS["llama2-70b"]), **change}
    with pytest.raises(ClusterSpecError, match=message):
        model_from_dict(data, "p: model")


def test_a_plans_model_must_be_a_mapping_with_the_required_fields():
    with pytest.raises(ClusterSpecError, match="p: model: expected a mapping"):
        model_from_dict([1], "p: model")
    with pytest.raises(ClusterSpecError, match="p: model: missing field"):
        model_from_dict({"name": "x"}, "p: model")
