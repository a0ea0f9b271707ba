"""A process without the right key tries to join a Helix cluster; prints what it got back (JSON).

    python intruder.py ATTEMPTS_JSON BIND_HOST WATCH_S

Each attempt: {"label", "name" (routing id to claim), "target" (host:port), "target_key" (the target's
public key, public in the plan), "secret" (CURVE secret to use, "new" for a made-up key, null for plain
TCP), "message" ("hello": a node's Hello to the coordinator; "step": a first-hop Step with a prompt)}.
For each attempt it sends the message and listens WATCH_S seconds, recording every message, event and
peer state.
"""

from __future__ import annotations

import json
import sys
import time

from vllm_helix import wire as p
from vllm_helix.comm import CurveKeys, Endpoint, EndpointOptions
from vllm_helix.errors import FrameRejected, HelixError, PeerLost

OPTIONS = EndpointOptions(heartbeat_s=0.2, peer_timeout_s=1.5, linger_s=0.2)
MESSAGES = {
    "hello": lambda name: p.Hello(name, [3, 8], 4096, 16, 256, "float32"),
    "step": lambda name: p.Step(990001, [p.Item("intruder-request", 0, 4, [11, 12, 13, 14],
                                               p.NewRequest([11, 12, 13, 14], ["near", "far"]))]),
}


def attempt(spec: dict, bind_host: str, watch_s: float) -> dict:
    own = CurveKeys.generate().secret if spec["secret"] == "new" else spec["secret"]
    curve = CurveKeys.from_secret(own, (spec["target_key"],)) if own else None
    endpoint = Endpoint(spec["name"], f"tcp://{bind_host}:*", options=OPTIONS, curve=curve)
    link = p.Channel(endpoint, endpoint if curve is not None else None)
    got: dict = {"label": spec["label"], "received": [], "events": [], "states": [], "send_error": None}
    try:
        link.connect("target", spec["target"], spec["target_key"])
        try:
            link.send("target", MESSAGES[spec["message"]](spec["name"]))
        except HelixError as exc:
            got["send_error"] = type(exc).__name__
        deadline = time.monotonic() + watch_s
        while time.monotonic() < deadline:
            got["states"].append(link.endpoint.peers()["target"])
            try:
                received = link.recv(0.2)
            except (PeerLost, FrameRejected) as exc:
                got["events"].append(type(exc).__name__)
                continue
            if received is not None:
                got["received"].append(type(received.message).__name__)
        got["messages_in"] = link.endpoint.stats()["received"]
    finally:
        link.close()
    got["states"] = sorted(set(got["states"]))
    return got


def main() -> None:
    attempts = json.loads(sys.argv[1])
    bind_host, watch_s = sys.argv[2], float(sys.argv[3])
    print(json.dumps([attempt(a, bind_host, watch_s) for a in attempts]), flush=True)


if __name__ == "__main__":
    main()
