"""What `vllm-helix profile` measures: layer counts, prefill chunk sizes, decode batches and contexts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vllm_helix.errors import ConfigError


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
        return max(self._decode_reach(max(self.contexts)), max(self.prompt_tokens) + 2)

    def _decode_reach(self, context: int) -> int:
        return context + len(self.decode_seqs) * (self.repeats + 1) + 2

    def within(self, max_context: int | None) -> Sweep:
        """This sweep less the prompt sizes and contexts a model taking at most `max_context` tokens cannot run."""
        if max_context is None:
            return self
        prompts = tuple(n for n in self.prompt_tokens if n + 2 <= max_context)
        contexts = tuple(c for c in self.contexts if self._decode_reach(c) <= max_context)
        if not prompts or not contexts:
            raise ConfigError(f"the model takes at most {max_context} tokens (max_position_embeddings): too few to "
                              f"profile prompts of {min(self.prompt_tokens)} and decodes at {min(self.contexts)}")
        return dataclasses.replace(self, prompt_tokens=prompts, contexts=contexts)


FULL = Sweep(prompt_tokens=(16, 64, 128, 256, 512, 1024, 2048), decode_seqs=(1, 2, 4, 8, 16, 32, 64),
             contexts=(128, 512, 1024), repeats=5, layer_points=4)
QUICK = Sweep(prompt_tokens=(16, 256), decode_seqs=(1, 8), contexts=(64,), repeats=3, layer_points=2)
