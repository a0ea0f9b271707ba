"""`vllm-helix worker --plan P --node N --model M`: run one node of a plan until the coordinator stops it."""

from __future__ import annotations

import logging

from vllm_helix.errors import HelixError
from vllm_helix.executor.link import COORDINATOR_PEER, open_link
from vllm_helix.executor.node_server import NodeServer
from vllm_helix.planner.keys import identity, predecessors
from vllm_helix.planner.plan import load_plan

logger = logging.getLogger(__name__)


def run_worker(plan_path: str, node: str, model: str, *, bind: str | None = None, kv_fraction: float = 0.05,
               max_num_batched_tokens: int = 2048, max_num_seqs: int = 256, max_model_len: int | None = None,
               start_timeout_s: float = 600.0, dtype: str = "auto",
               enforce_eager: bool = False, key_file: str | None = None, insecure: bool = False) -> None:
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
    curve = identity(plan, plan_path, node, key_file, insecure)  # before the model loads: key errors come fast
    from vllm_helix.executor.partial_worker import PartialLayerWorker

    worker = PartialLayerWorker(model, (layers.start, layers.end), num_layers_total=plan.model.num_layers,
                                memory_fraction=kv_fraction, max_num_batched_tokens=max_num_batched_tokens,
                                max_num_seqs=max_num_seqs, max_model_len=max_model_len, dtype=dtype,
                                enforce_eager=enforce_eager)
    worker.warm_up()  # also compiles, unless enforce_eager
    link = open_link(node, address, curve)
    try:
        link.connect(COORDINATOR_PEER, coordinator, plan.public_keys.get(COORDINATOR_PEER))
        addresses = {n.name: n.address for n in plan.cluster.nodes} | {COORDINATOR_PEER: coordinator}
        server = NodeServer(node, worker, link, addresses, max_num_batched_tokens, max_num_seqs,
                            predecessors(plan, node), plan.public_keys)
        logger.info("node %s: layers %s, listening on %s, coordinator %s%s", node, layers, address, coordinator,
                    ", encrypted (CURVE)" if link.encrypted else "")
        server.wait_for_start(start_timeout_s)
        server.serve_forever()
    finally:
        link.close()
