"""The node side: the `vllm-helix worker` process (node server, partial-layer vLLM worker, vLLM seam)."""
