"""The pieces of failover without engines: the batch book's drop and replay, membership, the live max flow.

(End to end, with real engines, processes and signals: tests/serving/test_elastic.py.)
"""

from __future__ import annotations

import logging

from coordinator.test_serving_parts import _route_book
from vllm.v1.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput

from vllm_helix import wire as p
from vllm_helix.coordinator.batches import BatchBook
from vllm_helix.coordinator.local_nodes import LocalNodes
from vllm_helix.coordinator.membership import Membership, stuck_nodes
from vllm_helix.coordinator.metrics import ClusterMetrics
from vllm_helix.planner.live_flow import live_max_flow


def _outputs(req_ids, sampled, rows, prompt_rows):
    return dict(zip(req_ids, sampled, strict=True))


def _new(rid: str, prompt: list[int], count: int) -> SchedulerOutput:
    out = SchedulerOutput.make_empty()
    out.scheduled_new_reqs = [NewRequestData(rid, prompt, [], None, None, ([],), 0, None)]
    out.num_scheduled_tokens = {rid: count}
    return out


def _cached(rid: str, computed: int, count: int, resumed_tokens: list[int] | None = None) -> SchedulerOutput:
    out = SchedulerOutput.make_empty()
    resumed = resumed_tokens is not None
    out.scheduled_cached_reqs = CachedRequestData([rid], {rid} if resumed else set(), [],
                                                  {rid: resumed_tokens} if resumed else {}, [None], [computed], [0])
    out.num_scheduled_tokens = {rid: count}
    return out


def test_a_dropped_request_gets_no_token_ignores_late_ones_and_is_replayed_under_a_new_id():
    book = BatchBook(_outputs, step_timeout_s=60)
    routes = {"r": ["head", "x"]}
    batch, steps = book.build(_new("r", [1, 2, 3], 3), routes)
    assert steps["head"].items[0].request_id == "r" and steps["head"].items[0].new.prompt_token_ids == [1, 2, 3]
    book.on_tokens(p.Tokens(batch.step_id, [p.TokenOut("r", 7)]))
    assert batch.future.result() == {"r": [7]}
    decode, _ = book.build(_cached("r", 3, 1), routes)
    assert book.drop(through="x") == ["r"]  # x is lost while the decode step is in flight
    assert decode.future.result() == {"r": []}  # answered at once, with no token
    book.on_tokens(p.Tokens(decode.step_id, [p.TokenOut("r", 8)]))  # a late token of the old route
    assert book.requests["r"].output_token_ids == [7]
    assert book.retire(["r"]) == {"r": ["head", "x"]}  # the old route's nodes free it
    # vLLM resumes it on the new route: all its tokens are prefilled there under a new id
    routes["r"] = ["head", "y"]
    replay, steps = book.build(_cached("r", 0, 4, resumed_tokens=[1, 2, 3, 7]), routes)
    item = steps["head"].items[0]
    assert (item.request_id, item.new.prompt_token_ids, item.new.route) == ("r#1", [1, 2, 3, 7], ["head", "y"])
    book.on_tokens(p.Tokens(replay.step_id, [p.TokenOut("r", 9), p.TokenOut("r#1", 8)]))  # the old id is ignored
    assert replay.future.result() == {"r": [8]}
    assert book.forget({"r"}) == {"r#1": ["head", "y"]} and not book.requests


def test_a_batch_in_flight_never_waits_on_an_incarnation_that_moved_on():
    """Rerouted twice in a row (the step timeout and the stuck node's loss each queued it): the first new route's
    prefill is still in flight when the request moves again. That batch answers it with no token at once, instead of
    waiting for a token the book would ignore; the engine once waited on such a batch for good, after the request
    finished on its next route."""
    book = BatchBook(_outputs, step_timeout_s=60)
    routes = {"r": ["head", "x"], "s": ["head", "x"]}
    book.build(_new("s", [5], 1), routes)
    first, _ = book.build(_new("r", [1, 2], 2), routes)
    book.retire(["r"])  # moved again before its prefill came back
    assert first.future.done() and first.future.result() == {"r": []}
    routes["r"] = ["head", "y"]
    again, steps = book.build(_cached("r", 0, 2, resumed_tokens=[1, 2]), routes)
    assert steps["head"].items[0].request_id == "r#1" and not again.future.done()
    book.on_tokens(p.Tokens(first.step_id, [p.TokenOut("r", 9)]))  # the old incarnation's: ignored
    book.on_tokens(p.Tokens(again.step_id, [p.TokenOut("r#1", 7)]))
    assert again.future.result() == {"r": [7]}
    decode, _ = book.build(_cached("s", 1, 1), routes)  # s is aborted by its client while a step is in flight
    book.forget({"s"})
    assert decode.future.result() == {"s": []} and not book.pending


def test_a_node_failure_of_a_rerouted_request_is_no_error():
    book = BatchBook(_outputs, step_timeout_s=60)
    batch, _ = book.build(_new("r", [1, 2], 2), {"r": ["head", "x"]})
    book.drop(through="x")
    assert book.on_failed(batch.step_id, ["r"], "PeerLost: x") == [] and book.take_failed() == {}
    other, _ = book.build(_new("s", [1, 2], 2), {"s": ["head", "y"]})
    assert book.on_failed(other.step_id, ["s"], "boom") == ["s"] and book.take_failed() == {"s": "boom"}


def test_a_step_timeout_drops_its_requests_for_rerouting():
    book = BatchBook(_outputs, step_timeout_s=0.0)
    batch, _ = book.build(_new("r", [1, 2], 2), {"r": ["head", "x"]})
    assert book.expire() == ["r"] and batch.future.result() == {"r": []} and book.take_failed() == {}


def test_a_timed_out_step_is_blamed_on_the_first_silent_node_of_its_route():
    book = _route_book({"head": 4096, "x": 4096, "y": 4096})
    assert book.admit("r1", 10, 10) and book.admit("r2", 10, 10)
    routes = book.routes_of(["r1", "r2", "gone"])
    assert sorted(map(tuple, routes)) == sorted(tuple(book.routes[r]) for r in ("r1", "r2"))
    everyone = {n for route in routes for n in route}
    now = 100.0
    assert stuck_nodes(routes, dict.fromkeys(everyone, now - 1), now, 5.0) == []  # all reporting: a lost message
    route = routes[0]  # head -> a branch node
    reporting = dict.fromkeys(everyone, now - 1)
    # the head stuck mid-step (silent since t=90): the branch node after it, which never got the step and
    # holds nothing, is silent too (it never reported) but not blamed
    assert stuck_nodes([route], {**reporting, "head": now - 10, route[1]: float("-inf")}, now, 5.0) == ["head"]
    assert stuck_nodes([route], {**reporting, route[1]: now - 10}, now, 5.0) == [route[1]]  # the branch node
    assert stuck_nodes([route], {route[1]: now}, now, 5.0) == ["head"]  # a node that never reported at all


def test_live_max_flow_follows_the_lost_nodes_and_the_router_avoids_them():
    book = _route_book({"head": 4096, "x": 4096, "y": 4096})
    planned, arcs = live_max_flow(book.plan.flow)
    assert planned > 0 and arcs[("head", "x")] > 0 and arcs[("head", "y")] > 0
    book.node_lost("x")
    assert 0 < book.live_flow < planned
    assert all("x" not in book.routes[f"r{i}"] for i in range(8) if book.admit(f"r{i}", 10, 10))
    book.node_lost("y")
    assert book.live_flow == 0 and not book.admit("none", 10, 10) and book.lost == {"x", "y"}
    book.node_back("x", 4096)
    book.node_back("y", 4096)
    assert book.live_flow == planned
    for rid in list(book.routes):  # (requests in flight weigh on the branch they hold)
        book.release(rid)
    assert {book.routes[rid][1] for rid in [f"s{i}" for i in range(8)] if book.admit(rid, 10, 10)} == {"x", "y"}


def test_membership_states_and_the_reroute_queue():
    members = Membership(["a", "b"])
    members.up("a")
    members.up("b")
    members.lose("b", "its link was lost")
    members.reroute(["r1", "r2"])
    assert members.describe() == "a up, b lost (its link was lost)"
    assert members.take_reroutes() == {"r1", "r2"} and members.take_reroutes() == set()
    assert members.lost_but({"a", "b"}) == ["b"] and members.lost_but({"b"}) == []  # told once per loss
    members.lose("a", "draining (SIGTERM)", draining=True)
    assert members.draining() == ["a"] and members.reachable("a") and not members.reachable("b")


def test_a_local_node_that_keeps_crashing_at_start_up_is_given_up_with_its_log(tmp_path):
    log = tmp_path / "n.log"
    log.write_text("Traceback ...\nRuntimeError: no weights\n")
    nodes = LocalNodes({}, {"n": log}, commands={"n": ["false"]})
    assert nodes.plan_restart("n") is None and nodes.plan_restart("n") is None
    given_up = nodes.plan_restart("n")
    assert given_up is not None and "3 times in a row" in given_up and "RuntimeError: no weights" in given_up
    nodes.started("n")  # one that came up and dies later is restarted again
    assert nodes.plan_restart("n") is None


def test_routes_follow_the_nodes_measured_speed_relative_to_each_other(caplog):
    book = _route_book({"head": 4096, "x": 4096, "y": 4096})
    book.metrics = ClusterMetrics(book.plan, "plan.yaml", "/models/m", folder=None)

    def branches(prefix: str, n: int = 30) -> tuple[int, int]:
        for rid in list(book.routes):
            book.release(rid)
        taken = [book.routes[f"{prefix}{i}"][1] for i in range(n) if book.admit(f"{prefix}{i}", 10, 10)]
        return taken.count("x"), taken.count("y")

    assert branches("a") == (15, 15)  # as planned: x and y alike
    # every node a fifth of its plan (an estimate off for all alike): no proportion changes
    assert not book.follow_speeds({"head": 0.2, "x": 0.2, "y": 0.2}, now=0.0)
    with caplog.at_level(logging.INFO, logger="vllm_helix.routes"):
        assert book.follow_speeds({"head": 0.2, "x": 0.2, "y": 0.1}, now=1.0)  # y at half the speed of x
    assert "relative speed: head 1.00, x 1.00, y 0.50" in caplog.text
    assert book.metrics.routing_speed == {"head": 1.0, "x": 1.0, "y": 0.5}  # helix_node_routing_speed
    assert branches("b") == (20, 10) and book.live_flow < book.planned_flow
    assert not book.follow_speeds({"head": 1.0, "x": 1.0, "y": 0.53}, now=30.0)  # within 10 %: no churn
    assert not book.follow_speeds({"head": 1.0, "x": 1.0, "y": 1.0}, now=5.0)  # a newer speed, too soon
    assert book.follow_speeds({"head": 1.0, "x": 1.0, "y": 1.0}, now=31.0)
    assert branches("c") == (15, 15)
    book.follow_speeds({"head": 1.0, "x": 1.0, "y": 0.5}, now=50.0)
    book.node_lost("y")  # a lost node's speed is forgotten: measured afresh when it is back
    book.node_back("y", 4096)
    assert "y" not in book.speed

    static = _route_book({"head": 4096, "x": 4096, "y": 4096}, static_weights=True)  # --helix-static-weights
    assert not static.follow_speeds({"head": 1.0, "x": 1.0, "y": 0.5}, now=0.0)
