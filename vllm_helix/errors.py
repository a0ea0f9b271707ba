"""Exception classes, one meaning each. CLI and server turn any HelixError into a clear message."""


class HelixError(Exception):
    """Base class of every error vllm-helix raises on purpose."""


class ConfigError(HelixError, ValueError):
    """An option or setting is invalid (message names the option, its value and what it accepts)."""


class ClusterSpecError(HelixError, ValueError):
    """A cluster, model, profile, plan or trace description is malformed (message says file and field)."""


class InfeasiblePlacement(HelixError):
    """No placement can serve the model on this cluster (e.g. not enough memory), or a given one is invalid."""


class SolverUnavailable(HelixError):
    """The requested MILP solver is missing or unusable (e.g. size-limited license)."""


class PeerLost(HelixError):
    """A transport peer stopped answering heartbeats or its connection was cut."""


class TransportTimeout(HelixError, TimeoutError):
    """A send or receive did not complete within its timeout."""


class FrameRejected(HelixError):
    """A received message was malformed, truncated, oversized or of the wrong version."""


class EngineStartError(HelixError):
    """A partial-layer engine cannot start: bad layer range, unloadable model, unsupported vLLM, or
    not enough memory for its KV cache (message says which and what to change)."""


class KVCacheFull(HelixError):
    """A node has no free KV-cache blocks for a request step (the router should have checked capacity)."""
