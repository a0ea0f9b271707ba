"""`WorkerConfig`: a node's settings, with their one set of defaults (no vLLM imports here).

Built once, from `vllm-helix worker`'s options (`from_cli`) or, for local nodes, from `vllm serve`'s own
config (the executor fills it and hands it over as `cli_args()`), then passed whole to the partial-layer
worker, its vLLM config and the node server. The CLI options are generated from the fields, so a
default or a help text lives only here.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vllm_helix.errors import ConfigError


def _option(default: Any, help: str, flag: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    kv_fraction: float = _option(0.05, "fraction of the memory free after loading the weights for the KV cache")
    kv_cache_bytes: int | None = _option(None, "KV cache size in bytes (overrides --kv-fraction)")
    max_num_batched_tokens: int = _option(2048, "tokens per batch on this node")
    max_num_seqs: int = _option(256, "requests per batch on this node")
    max_model_len: int | None = _option(None, "longest sequence (default: the model's)")
    dtype: str = _option("auto", "weights/activations dtype; must match the server's (auto: float32 on a host "
                                 "without a CUDA GPU, where bfloat16 CPU kernels crash on some x86 CPUs)")
    enforce_eager: bool = _option(False, "run the layers eagerly (default: vLLM's torch.compile, as `vllm serve` does)")
    tensor_parallel_size: int | None = _option(
        None, "vLLM tensor parallelism inside this node: its layers run on this many devices, one rank process "
              "each (default: the plan node's `tp`, else its `gpus`)")
    seed: int = _option(0, "sampling seed of the last node (as vLLM's --seed)")
    start_timeout_s: float = _option(600.0, "seconds to wait for the coordinator", flag="--start-timeout")
    key: str | None = _option(None, "this node's CURVE secret key file (default: <plan>.<node>.key beside the plan)")
    insecure: bool = _option(False, "plain TCP on non-loopback addresses: no encryption, no authentication "
                                    "(logs a warning)", flag="--helix-insecure")

    def __post_init__(self) -> None:
        if not 0 < self.kv_fraction < 1:
            raise ConfigError(f"--kv-fraction must be in (0, 1), got {self.kv_fraction}")
        for name in ("max_num_batched_tokens", "max_num_seqs", "max_model_len", "kv_cache_bytes",
                     "tensor_parallel_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{_flag(_field(name))} must be >= 1, got {value}")
        if not self.start_timeout_s > 0:  # nan too
            raise ConfigError(f"--start-timeout must be > 0 seconds, got {self.start_timeout_s}")

    def for_node(self, node: str, gpus: int, plan_tp: int) -> WorkerConfig:
        """This config on plan node `node`: its TP degree is the plan's (`tp`, else `gpus`) unless given, and a
        given one must fit the node's devices."""
        if self.tensor_parallel_size is None:
            return dataclasses.replace(self, tensor_parallel_size=plan_tp)
        if self.tensor_parallel_size > gpus:
            raise ConfigError(f"--tensor-parallel-size {self.tensor_parallel_size} is more than node {node}'s "
                              f"{gpus} gpus in the plan's cluster")
        return self

    # ------------------------------------------------------------------ command line

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(cls):
            if f.type == "bool":
                parser.add_argument(_flag(f), dest=f.name, action="store_true", help=f.metadata["help"])
            else:
                kind = {"float": float, "int": int, "int | None": int, "str": str, "str | None": str}[str(f.type)]
                shown = "" if f.default is None else f" (default: {f.default})"
                parser.add_argument(_flag(f), dest=f.name, type=kind, default=f.default,
                                    metavar=f.name.removesuffix("_s").upper(), help=f.metadata["help"] + shown)

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> WorkerConfig:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def cli_args(self) -> list[str]:
        """The `vllm-helix worker` options that rebuild this config (for local nodes)."""
        out: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                out += [_flag(f)] if value else []
            elif value is not None:
                out += [_flag(f), str(value)]
        return out


def _field(name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(WorkerConfig) if f.name == name)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")
