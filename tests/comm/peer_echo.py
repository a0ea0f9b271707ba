"""Helper process for the transport tests: echoes every message back to its sender, then exits.

    python peer_echo.py NAME BIND [heartbeat_s peer_timeout_s [SECRET ALLOWED_PUBLIC]]

Prints its bound address on the first line. Connects back lazily to each sender that sent a
`hello` message carrying meta={"reply_to": address}. Exits on a `quit` message or when stdin closes.
"""

import contextlib
import sys
import threading

from vllm_helix.comm import CurveKeys, Endpoint, EndpointOptions
from vllm_helix.errors import FrameRejected, PeerLost, TransportTimeout


def main() -> None:
    name, bind = sys.argv[1], sys.argv[2]
    hb, timeout = (float(sys.argv[3]), float(sys.argv[4])) if len(sys.argv) > 4 else (0.05, 0.6)
    curve = CurveKeys.from_secret(sys.argv[5], (sys.argv[6],)) if len(sys.argv) > 6 else None  # CURVE: one peer
    ep = Endpoint(name, bind, options=EndpointOptions(heartbeat_s=hb, peer_timeout_s=timeout, linger_s=2.0),
                  curve=curve)
    print(ep.address, flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        try:
            m = ep.recv(timeout=0.1)
        except (TransportTimeout, FrameRejected, PeerLost):
            continue
        if m.header.kind == "quit":
            break
        if "reply_to" in m.header.meta and m.sender not in ep.peers():
            ep.connect(m.sender, m.header.meta["reply_to"], curve.allowed_peers[0] if curve else None)
        if m.sender in ep.peers():
            with contextlib.suppress(PeerLost):
                ep.send(m.sender, m.header, m.payloads, timeout=5.0)
    ep.close()


if __name__ == "__main__":
    main()
