"""vllm-helix: serve one LLM across a heterogeneous GPU cluster (Helix, ASPLOS'25) on top of vLLM."""

__version__ = "0.1.0"
