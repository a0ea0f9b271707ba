"""`vllm-helix worker --plan P --node N --model M`: run one node of a plan until the coordinator stops it.

SIGTERM while serving drains the node (the coordinator moves its requests elsewhere, then lets it go); before
it serves, SIGTERM stops it at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time

from vllm_helix.errors import ConfigError, PeerLost, TransportTimeout
from vllm_helix.node.config import WorkerConfig
from vllm_helix.node.server import NodeServer
from vllm_helix.planner.files import load_plan
from vllm_helix.planner.keys import identity, predecessors
from vllm_helix.wire import COORDINATOR_PEER, Channel, Progress, open_channel

logger = logging.getLogger(__name__)
_PROCESS_START = time.monotonic()  # close enough: this module loads as the worker process starts


def run_worker(plan_path: str, node: str, model: str, config: WorkerConfig, *, bind: str | None = None) -> None:
    plan = load_plan(plan_path)
    layers = plan.placement[node]
    if layers is None:
        raise ConfigError(f"{plan_path}: node {node!r} holds no layers in this plan "
                         f"(used nodes: {', '.join(plan.placement.ranges)})")
    spec = plan.cluster.node(node)
    config = config.for_node(node, spec.gpu_count, spec.tensor_parallel_size)  # the node's TP degree
    address = bind or spec.address
    coordinator = plan.cluster.coordinator.address
    for what, value in (("node " + node, address), ("the coordinator", coordinator)):
        if value == "local":
            raise ConfigError(f"{plan_path}: {what} has address 'local'; local nodes are started by "
                             "`vllm serve --executor helix` itself, or give --bind HOST:PORT")
    curve = identity(plan, plan_path, node, config.key, config.insecure)  # before the model loads: key errors come fast
    channel = open_channel(node, address, curve)  # early, so the coordinator hears each start-up phase
    try:
        channel.connect(COORDINATOR_PEER, coordinator, plan.public_keys.get(COORDINATOR_PEER))
        progress = StartupProgress(node, [layers.start, layers.end], channel)
        progress("loading")
        from vllm_helix.node.partial_worker import PartialLayerWorker

        worker = PartialLayerWorker(model, (layers.start, layers.end), config, num_layers_total=plan.model.num_layers)
        worker.warm_up(progress)  # reports compiling (unless enforce_eager) and warming up
        addresses = {n.name: n.address for n in plan.cluster.nodes} | {COORDINATOR_PEER: coordinator}
        server = NodeServer(node, worker, channel, addresses, predecessors(plan, node), plan.public_keys, progress)
        logger.info("node %s: layers %s, listening on %s, coordinator %s%s", node, layers, address, coordinator,
                    ", encrypted (CURVE)" if channel.encrypted else "")
        progress("ready")
        server.wait_for_start(config.start_timeout_s)  # and calibrates when the coordinator asks
        with _drain_on_sigterm(server):
            server.serve_forever()
    finally:
        channel.close()


@contextlib.contextmanager
def _drain_on_sigterm(server: NodeServer):
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: server.drain())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StartupProgress:
    """Log each start-up phase with the seconds since this process started, and tell the coordinator,
    which logs the same line: a slow start shows where it spends its time, on either side."""

    def __init__(self, node: str, layers: list[int], channel: Channel):
        self.node, self.layers, self.channel = node, layers, channel

    def __call__(self, phase: str) -> None:
        message = Progress(self.node, self.layers, phase, time.monotonic() - _PROCESS_START)
        logger.info(message.line())
        # the coordinator may not be up yet; it learns that the node is ready from its Hello
        with contextlib.suppress(PeerLost, TransportTimeout):
            self.channel.send(COORDINATOR_PEER, message)
