"""Let the Helix executor choose how many batches EngineCore keeps in flight (see the ledger)."""

from __future__ import annotations

from vllm_helix.options import EXECUTOR_CLASS, batches_in_flight, helix_options


def apply() -> None:
    from vllm.config import VllmConfig

    original = VllmConfig.max_concurrent_batches
    if getattr(original.fget, "_vllm_helix", False):
        return

    def max_concurrent_batches(self) -> int:
        if _backend_name(self.parallel_config.distributed_executor_backend) == EXECUTOR_CLASS:
            return batches_in_flight(helix_options(self.additional_config))
        return original.fget(self)

    max_concurrent_batches._vllm_helix = True  # type: ignore[attr-defined]
    VllmConfig.max_concurrent_batches = property(max_concurrent_batches)


def _backend_name(backend: object) -> str:
    """The executor backend as a qualified name (it may be given as a string or as the class)."""
    if isinstance(backend, type):
        return f"{backend.__module__}.{backend.__qualname__}"
    return backend if isinstance(backend, str) else ""
