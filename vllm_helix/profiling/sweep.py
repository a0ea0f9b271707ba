"""What `vllm-helix profile` measures: layer counts, prefill chunk sizes, decode batches and contexts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sweep:
    prompt_tokens: tuple[int, ...]  # prefill chunk sizes (tokens in one batch)
    decode_seqs: tuple[int, ...]  # decode batch sizes (sequences, one token each)
    contexts: tuple[int, ...]  # tokens already cached per sequence when the decode steps are timed
    repeats: int  # timed runs per point (the median is kept)
    layer_points: int  # layer counts measured, spread over 1..the most one node may hold

    def layer_counts(self, most: int) -> list[int]:
        """`layer_points` counts from 1 to `most`, evenly spread (both ends included)."""
        if most <= 1 or self.layer_points <= 1:
            return [1]
        n = min(self.layer_points, most)
        return sorted({round(1 + i * (most - 1) / (n - 1)) for i in range(n)})

    def longest_sequence(self) -> int:
        """Tokens the longest timed sequence reaches: a context plus one token per timed decode step."""
        return max(max(self.contexts) + len(self.decode_seqs) * (self.repeats + 1) + 2, max(self.prompt_tokens) + 2)


FULL = Sweep(prompt_tokens=(16, 64, 128, 256, 512, 1024, 2048), decode_seqs=(1, 2, 4, 8, 16, 32, 64),
             contexts=(128, 512, 1024), repeats=5, layer_points=4)
QUICK = Sweep(prompt_tokens=(16, 256), decode_seqs=(1, 8), contexts=(64,), repeats=3, layer_points=2)
