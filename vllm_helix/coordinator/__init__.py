"""The coordinator side: runs inside `vllm serve --executor helix` (executor, scheduler, routing, batches)."""
