"""Exception classes, one meaning each. CLI and server turn any HelixError into a clear message.

HelixError
├── ConfigError          an option or setting is invalid (reported as a usage error of its command)
│   └── ClusterSpecError a cluster, model, profile, plan or trace file is malformed
├── PlanningError        no placement: InfeasiblePlacement, SolverUnavailable
├── StartupError         a process or cluster cannot start: EngineStartError, SeamDrift
├── TransportError       the network between processes: PeerLost, TransportTimeout, FrameRejected
└── NodeError            a node refused or failed a step (KVCacheFull), or was lost while serving

Every message says what went wrong, where (file and field, node and address, option) and what to do.
"""


class HelixError(Exception):
    """Base class of every error vllm-helix raises on purpose."""


# ---------------------------------------------------------------- configuration


class ConfigError(HelixError, ValueError):
    """An option or setting is invalid (message names the option, its value and what it accepts)."""


class ClusterSpecError(ConfigError):
    """A cluster, model, profile, plan or trace description is malformed (message says file and field)."""


# ---------------------------------------------------------------- planning


class PlanningError(HelixError):
    """No placement could be found or evaluated."""


class InfeasiblePlacement(PlanningError):
    """No placement can serve the model on this cluster (e.g. not enough memory), or a given one is invalid."""


class SolverUnavailable(PlanningError):
    """The requested MILP solver is missing or unusable (e.g. size-limited license)."""


# ---------------------------------------------------------------- start-up


class StartupError(HelixError):
    """A process or the cluster cannot start: nodes that never came up, a mismatched node, `vllm serve`
    that exited during start-up."""


class EngineStartError(StartupError):
    """A partial-layer engine cannot start: bad layer range, unloadable model, unsupported vLLM, or
    not enough memory for its KV cache (message says which and what to change)."""


class SeamDrift(StartupError):
    """The installed vLLM changed an internal that a seam relies on (vllm_helix/seams.py)."""


# ---------------------------------------------------------------- transport


class TransportError(HelixError):
    """Sending or receiving between processes failed."""


class PeerLost(TransportError):
    """A transport peer stopped answering heartbeats or its connection was cut."""


class TransportTimeout(TransportError, TimeoutError):
    """A send or receive did not complete within its timeout."""


class FrameRejected(TransportError):
    """A received message was malformed, truncated, oversized or of the wrong version."""

    peer: str | None = None  # who sent it, when known


# ---------------------------------------------------------------- nodes


class NodeError(HelixError):
    """A node refused or failed a step (a request it does not hold, a step out of order), or nodes were lost."""


class KVCacheFull(NodeError):
    """A node has no free KV-cache blocks for a request step (the router should have checked capacity)."""
