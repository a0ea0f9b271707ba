"""`vllm-helix worker --plan P --node N --model M`: run one node of a plan until the coordinator stops it."""

from __future__ import annotations

import contextlib
import logging
import time

from vllm_helix.errors import HelixError, PeerLost, TransportTimeout
from vllm_helix.executor import protocol as p
from vllm_helix.executor.link import COORDINATOR_PEER, Link, open_link
from vllm_helix.executor.node_server import NodeServer
from vllm_helix.planner.plan import load_plan

logger = logging.getLogger(__name__)
_PROCESS_START = time.monotonic()  # close enough: this module loads as the worker process starts


def run_worker(plan_path: str, node: str, model: str, *, bind: str | None = None, kv_fraction: float = 0.05,
               max_num_batched_tokens: int = 2048, max_num_seqs: int = 256, max_model_len: int | None = None,
               start_timeout_s: float = 600.0, dtype: str = "auto",
               enforce_eager: bool = False) -> None:
    plan = load_plan(plan_path)
    layers = plan.placement[node]
    if layers is None:
        raise HelixError(f"{plan_path}: node {node!r} holds no layers in this plan "
                         f"(used nodes: {', '.join(plan.placement.ranges)})")
    address = bind or plan.cluster.node(node).address
    coordinator = plan.cluster.coordinator.address
    for what, value in (("node " + node, address), ("the coordinator", coordinator)):
        if value == "local":
            raise HelixError(f"{plan_path}: {what} has address 'local'; local nodes are started by "
                             "`vllm serve --executor helix` itself, or give --bind HOST:PORT")
    link = open_link(node, address)  # early, so the coordinator hears each start-up phase
    try:
        link.connect(COORDINATOR_PEER, coordinator)
        progress = StartupProgress(node, [layers.start, layers.end], link)
        progress("loading")
        from vllm_helix.executor.partial_worker import PartialLayerWorker

        worker = PartialLayerWorker(model, (layers.start, layers.end), num_layers_total=plan.model.num_layers,
                                    memory_fraction=kv_fraction, max_num_batched_tokens=max_num_batched_tokens,
                                    max_num_seqs=max_num_seqs, max_model_len=max_model_len, dtype=dtype,
                                    enforce_eager=enforce_eager)
        worker.warm_up(progress)  # reports compiling (unless enforce_eager) and warming up
        addresses = {n.name: n.address for n in plan.cluster.nodes} | {COORDINATOR_PEER: coordinator}
        server = NodeServer(node, worker, link, addresses, max_num_batched_tokens, max_num_seqs)
        logger.info("node %s: layers %s, listening on %s, coordinator %s", node, layers, address, coordinator)
        progress("ready")
        server.wait_for_start(start_timeout_s)
        server.serve_forever()
    finally:
        link.close()


class StartupProgress:
    """Log each start-up phase with the seconds since this process started, and tell the coordinator,
    which logs the same line: a slow start shows where it spends its time, on either side."""

    def __init__(self, node: str, layers: list[int], link: Link):
        self.node, self.layers, self.link = node, layers, link

    def __call__(self, phase: str) -> None:
        message = p.Progress(self.node, self.layers, phase, time.monotonic() - _PROCESS_START)
        logger.info(message.line())
        # the coordinator may not be up yet; it learns that the node is ready from its Hello
        with contextlib.suppress(PeerLost, TransportTimeout):
            self.link.send(COORDINATOR_PEER, message)
