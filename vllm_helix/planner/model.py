"""Model description: what the planner needs to know about a decoder-only LLM.

Built-ins reproduce the reference system's constants (helix-spec §2.1); any Hugging Face decoder
`config.json` that vLLM supports gives the same numbers computed from its shapes.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_helix.errors import ClusterSpecError
from vllm_helix.text_files import read_json

_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float": 4, "half": 2, "float8_e4m3fn": 1, "int8": 1}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Sizes of one decoder model. `profile_name` selects bundled GPU profiles (e.g. 'llama2_70b')."""

    name: str
    num_layers: int
    hidden_size: int
    layer_bytes: float  # parameters of one transformer layer, in bytes
    activation_bytes_per_token: int  # what one token costs on a node->node hop
    token_bytes: int = 2  # what one token costs on a coordinator hop (ids in, sampled id out)
    kv_bytes_per_token_layer: int = 0  # K+V of one token in one layer
    profile_name: str | None = None
    max_context: int | None = None  # the longest sequence it takes (max_position_embeddings), when known
    dtype_bytes: int = 2  # bytes per weight and KV value in its checkpoint's dtype

    @property
    def total_layer_bytes(self) -> float:
        return self.layer_bytes * self.num_layers


# Reference constants (helix-spec §2.1): 1.53 GB / 1.0 GB per layer, fp16 activations of `hidden` per token.
BUILTIN_MODELS = {
    "llama2-70b": ModelSpec(
        name="llama2-70b", num_layers=80, hidden_size=8192, layer_bytes=1.53e9,
        activation_bytes_per_token=8192 * 2, token_bytes=2,
        kv_bytes_per_token_layer=2 * 8 * 128 * 2, profile_name="llama2_70b",
    ),
    "llama1-30b": ModelSpec(
        name="llama1-30b", num_layers=60, hidden_size=6656, layer_bytes=1.0e9,
        activation_bytes_per_token=6656 * 2, token_bytes=2,
        kv_bytes_per_token_layer=2 * 6656 * 2, profile_name="llama1_30b",
    ),
}


def load_model(name_or_path: str | Path) -> ModelSpec:
    """A built-in name ('llama2-70b', 'llama1-30b'), a model directory or a `config.json` path."""
    key = str(name_or_path)
    if key in BUILTIN_MODELS:
        return BUILTIN_MODELS[key]
    path = Path(key)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ClusterSpecError(
            f"model {key!r}: not a built-in ({', '.join(BUILTIN_MODELS)}) and no config.json at {path}"
        )
    config = read_json(path, "model config")
    return model_from_hf_config(config, name=path.parent.name or key, source=str(path))


MAX_LAYERS = 10_000  # a model's decoder layers: plans, profiles and the simulator hold per-layer lists
MAX_DIMENSION = 1 << 24  # any other size (hidden, heads, experts, context): past any model, far from overflow


def _size_problem(key: str, value: Any) -> str | None:
    """What is wrong with a model size (None: nothing): a positive integer up to its bound."""
    if not _positive_int(value):
        return "must be a positive integer"
    limit = MAX_LAYERS if key in ("num_layers", "num_hidden_layers") else MAX_DIMENSION * (64 if "bytes" in key else 1)
    return None if value <= limit else f"must be at most {limit}"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def model_from_hf_config(config: Any, name: str, source: str = "<config>") -> ModelSpec:
    """Sizes of a decoder layer from a Hugging Face config (Llama/Mistral/Qwen-style: attention + gated MLP)."""
    if not isinstance(config, dict):
        raise ClusterSpecError(f"{source}: not a model config (expected a JSON object, got {type(config).__name__})")
    text = config.get("text_config")
    if text is not None and not isinstance(text, dict):
        raise ClusterSpecError(f"{source}: text_config: expected an object, got {text!r}")
    config = text or config  # multimodal wrappers keep the LM here

    def need(key: str) -> int:
        value = config.get(key)
        if value is None:
            raise ClusterSpecError(f"{source}: {key}: required positive integer, got None")
        if problem := _size_problem(key, value):
            raise ClusterSpecError(f"{source}: {key}: {problem}, got {reprlib.repr(value)}")
        return value

    def optional(key: str, default: int) -> int:
        """An optional size: absent or null gives the default; present, it must be a positive integer too."""
        return default if config.get(key) is None else need(key)

    hidden, layers, heads = need("hidden_size"), need("num_hidden_layers"), need("num_attention_heads")
    intermediate = need("intermediate_size")
    kv_heads = optional("num_key_value_heads", heads)
    head_dim = optional("head_dim", hidden // heads)
    if head_dim < 1:
        raise ClusterSpecError(f"{source}: hidden_size {hidden} < num_attention_heads {heads}: no head_dim")
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16").replace("torch.", "")
    if dtype not in _DTYPE_BYTES:
        raise ClusterSpecError(f"{source}: torch_dtype: unknown dtype {dtype!r}")
    width = _DTYPE_BYTES[dtype]
    attention = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    mlp = 3 * hidden * intermediate
    experts = next((need(k) for k in ("num_local_experts", "num_experts") if config.get(k) not in (None, 0)), 1)
    params = attention + mlp * experts + 2 * hidden
    positions = config.get("max_position_embeddings")
    return ModelSpec(
        name=name,
        num_layers=layers,
        hidden_size=hidden,
        layer_bytes=float(params * width),
        # a hop carries the residual stream: one float32 sum, or the 16-bit (hidden, residual) pair (also the
        # activations of 8-bit weights): 4 bytes per hidden unit either way (node/partial_worker.py)
        activation_bytes_per_token=4 * hidden,
        token_bytes=4,  # int32 token ids
        kv_bytes_per_token_layer=2 * kv_heads * head_dim * width,
        max_context=positions if _size_problem("max_context", positions) is None else None,
        dtype_bytes=width,
    )


# ModelSpec fields in a plan file: what each must be (None allowed where the field's default is None)
_POSITIVE_INTS = ("num_layers", "hidden_size", "activation_bytes_per_token", "token_bytes", "dtype_bytes")


def model_from_dict(data: Any, source: str) -> ModelSpec:
    """A ModelSpec from a plan's `model:` mapping (dataclasses.asdict of one), every field checked."""
    if not isinstance(data, dict):
        raise ClusterSpecError(f"{source}: expected a mapping of the model's sizes, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(ModelSpec)}
    if unknown := sorted(map(str, set(data) - set(fields))):
        raise ClusterSpecError(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
    if missing := [n for n in required if n not in data]:
        raise ClusterSpecError(f"{source}: missing field(s) {', '.join(missing)}")
    for key, value in data.items():
        if problem := _field_problem(key, value):
            raise ClusterSpecError(f"{source}.{key}: {problem}, got {reprlib.repr(value)}")
    return ModelSpec(**data)


def _field_problem(key: str, value: Any) -> str | None:
    if key == "name":
        return None if isinstance(value, str) and value else "must be a non-empty string"
    if key == "profile_name":
        return None if value is None or isinstance(value, str) else "must be a string or null"
    if key == "layer_bytes":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        return None if ok else "must be a positive finite number of bytes"
    if key == "kv_bytes_per_token_layer":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return None if ok else "must be an integer >= 0"
    if key == "max_context" and value is None:
        return None
    return _size_problem(key, value)
