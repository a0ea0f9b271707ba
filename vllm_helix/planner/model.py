"""Model description: what the planner needs to know about a decoder-only LLM.

Built-ins reproduce the reference system's constants (helix-spec §2.1); any Hugging Face decoder
`config.json` that vLLM supports gives the same numbers computed from its shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vllm_helix.errors import ClusterSpecError

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
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ClusterSpecError(f"{path}: cannot read model config: {exc}") from None
    return model_from_hf_config(config, name=path.parent.name or key, source=str(path))


def model_from_hf_config(config: dict, name: str, source: str = "<config>") -> ModelSpec:
    """Sizes of a decoder layer from a Hugging Face config (Llama/Mistral/Qwen-style: attention + gated MLP)."""
    config = config.get("text_config", config)  # multimodal wrappers keep the LM here

    def need(key: str) -> int:
        value = config.get(key)
        if not isinstance(value, int) or value <= 0:
            raise ClusterSpecError(f"{source}: {key}: required positive integer, got {value!r}")
        return value

    hidden, layers, heads = need("hidden_size"), need("num_hidden_layers"), need("num_attention_heads")
    intermediate = need("intermediate_size")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16").replace("torch.", "")
    if dtype not in _DTYPE_BYTES:
        raise ClusterSpecError(f"{source}: torch_dtype: unknown dtype {dtype!r}")
    width = _DTYPE_BYTES[dtype]
    attention = hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + heads * head_dim * hidden
    mlp = 3 * hidden * intermediate
    experts = config.get("num_local_experts") or config.get("num_experts") or 1
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
        max_context=positions if isinstance(positions, int) else None,
        dtype_bytes=width,
    )
