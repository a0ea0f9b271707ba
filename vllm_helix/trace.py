"""Per-step hot-path tracing: where a Helix hop spends the time that is not model compute (docs/hot_path.md).

Off by default. With `VLLM_HELIX_TRACE=DIR` in its environment, the coordinator and every node append one
JSON line per step (coordinator) or per batch (node) to `DIR/<name>.jsonl`, with wall-clock timestamps
(`time.time()`: comparable across processes on one host; across hosts only as far as their clocks agree):

* coordinator `{"step", "submit", "sent", "recv": [...], "done", "requests"}`: `submit` when the engine hands the
  batch over, `sent` as the first hop's Step goes to the transport (every sender stamps just before its send call,
  so no receiver has a message before its stamp), `recv` as each last node's Tokens arrive (decoded), `done` when
  the engine's output is ready (the time from a `done` to the next `submit` is vLLM's scheduler and output
  processing: the table's `engine`), `cpu` the engine thread's CPU seconds from `submit` until its Steps are sent;
* node `{"node", "arrived": {step: t}, "model": [start, end], "sent": {step: t}, "held": {step: t}, "handed",
  "cpu", "tokens", "seqs", "decodes", "context"}`:
  each Step taken off the socket by the transport's I/O thread, the vLLM runner's forward (the node's
  compute), each step's output going to the next hop; under async scheduling (`--helix-async`) a first node's
  step that came before its token: `held` when it came and `arrived` when the token did, and `handed` when
  a last node sends its sampled tokens to the first nodes; `cpu` is the serving thread's CPU seconds for the
  batch outside the forward (decode, merge, input building, encode, send): unlike wall-clock phases it
  barely moves when other processes share the cores; `tokens`, `seqs`, `decodes` (its one-token items) and
  `context` (their mean tokens cached, or null) are the batch's shape.

`summarize(DIR)` turns them into the per-hop table bench/bench_serving.py prints (medians: what a typical hop
costs) and the decode step cycle (means along one chain: what each segment takes from throughput, queueing and
tails included), or under async scheduling the ring from a last node's token to the next one. When tracing is
off the hot path pays one `is None` test per step.
"""

from __future__ import annotations

import bisect
import json
import os
import statistics
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TRACE_ENV = "VLLM_HELIX_TRACE"
FLUSH_S = 0.5  # nodes are stopped with SIGTERM: keep what was traced on disk


class StepTrace:
    """Appends JSON lines to one file, written every FLUSH_S; owners also flush when idle (a short run's last
    lines would otherwise wait for the next record, and a stopped process never writes them). Rows wait in memory
    until then: encoding one where it is made costs the hot path ~50 us a batch (caches cold after a forward),
    which the next batch's `assembly` would show. The rows' dicts must not change after `record`."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a")
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # the coordinator records from two threads
        self._flushed = time.monotonic()

    def record(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append(row)
        if time.monotonic() - self._flushed > FLUSH_S:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
            self._flushed = time.monotonic()
            self._file.write("".join(json.dumps(row) + "\n" for row in rows))
            self._file.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()


def tracer(name: str) -> StepTrace | None:
    """`name`'s trace file under $VLLM_HELIX_TRACE, or None (tracing off)."""
    directory = os.environ.get(TRACE_ENV)
    return StepTrace(Path(directory) / f"{name}.jsonl") if directory else None


# ------------------------------------------------------------------------- summary

PHASES = ("in", "assembly", "compute", "post", "queue", "held", "cpu")
CYCLE = ("engine", "build", "in", "wait", "compute", "post", "return", "finish")
RING = ("in", "wait", "compute", "post")  # async scheduling: the coordinator's segments are off the chain


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The trace's rows; a line that is not one (a process stopped mid-line, a foreign file, a field of another
    type than the summary reads) is left out."""
    is_row = _coordinator_row if path.stem == "coordinator" else _node_row
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, an integer past Python's digit limit, deep nesting
            continue
        if isinstance(row, dict) and is_row(row):
            rows.append(row)
    return rows


def _coordinator_row(row: dict[str, Any]) -> bool:
    return (_is_int(row.get("step")) and all(_is_number(row.get(k)) for k in ("submit", "sent", "done"))
            and isinstance(row.get("recv"), list) and all(map(_is_number, row["recv"]))
            and _is_number(row.get("cpu", 0.0)))


def _node_row(row: dict[str, Any]) -> bool:
    model = row.get("model")
    return ("tokens" in row and _is_step_times(row.get("arrived")) and _is_step_times(row.get("sent"))
            and _is_step_times(row.get("held", {})) and (row.get("handed") is None or _is_number(row["handed"]))
            and isinstance(model, list) and len(model) == 2 and all(map(_is_number, model))
            and _is_number(row.get("cpu", 0.0)))


def _is_step_times(value: Any) -> bool:
    """{step id: time}, as a node writes `arrived` and `sent` (JSON keys are strings)."""
    return isinstance(value, dict) and all(_is_step_id(k) and _is_number(t) for k, t in value.items())


def _is_step_id(key: str) -> bool:
    try:
        int(key)
    except ValueError:
        return False
    return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite number that float arithmetic takes (a huge JSON integer would overflow it)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e300


def node_hops(coordinator: list[dict], nodes: dict[str, list[dict]]) -> list[dict[str, Any]]:
    """One row per (node, step): `in` (the transport, from the sender queuing it to this node's I/O thread
    receiving it; for a step that waited for its token, the token's: from the last node handing it over),
    `held` (async: that wait, which overlaps the chain), `queue` (waiting for the node's previous batch),
    `assembly` (the rest until the forward starts: waking up, decoding, merging steps, vLLM input building),
    `compute` (the forward), `post` (results split, encoded and queued to the next hop); seconds."""
    sent_by: dict[int, list[float]] = {}  # step -> times its Steps were queued (by the coordinator or a node)
    for row in coordinator:
        sent_by.setdefault(row["step"], []).append(row["sent"])
    for batches in nodes.values():
        for batch in batches:
            for step, t in batch["sent"].items():
                sent_by.setdefault(int(step), []).append(t)
    handed = sorted(b["handed"] for batches in nodes.values() for b in batches if b.get("handed") is not None)
    hops = []
    for name, batches in nodes.items():
        free_at = 0.0  # when the node finished its previous batch
        for batch in sorted(batches, key=lambda b: b["model"][0]):
            start, end = batch["model"]
            last_sent = max(batch["sent"].values(), default=end)
            for step, arrived in batch["arrived"].items():
                held_at = batch.get("held", {}).get(step)
                if held_at is None:
                    came = max((t for t in sent_by.get(int(step), []) if t <= arrived), default=None)
                else:  # async: its last hop was the token's, from the last node that handed it over
                    before = bisect.bisect_right(handed, arrived)
                    came = handed[before - 1] if before else None
                ready = max(arrived, free_at)
                hops.append({"node": name, "step": int(step), "tokens": batch["tokens"], "cpu": batch.get("cpu", 0.0),
                             "decode": batch.get("seqs") is not None and batch.get("decodes") == batch["seqs"],
                             "came": came, "held_at": held_at, "in": arrived - came if came is not None else 0.0,
                             "queue": max(0.0, min(start, free_at) - arrived),
                             "held": arrived - held_at if held_at is not None else 0.0,
                             "assembly": max(0.0, start - ready), "compute": end - start,
                             "post": batch["sent"].get(step, last_sent) - end})
            free_at = last_sent
    return hops


def summarize(directory: Path, since: float = 0.0) -> dict[str, Any]:
    """Medians (ms) per node and phase, the coordinator's own costs, and the per-hop overhead
    (in + assembly + post of each node step; the return leg to the coordinator counts as a hop too),
    over the steps submitted from `since` (a time.time()) on."""
    # not a folder named x.jsonl, nor a dangling link or a pipe
    files = {p.stem: read_rows(p) for p in sorted(Path(directory).glob("*.jsonl")) if p.is_file()}
    coordinator = [row for row in files.pop("coordinator", []) if row["submit"] >= since]
    steps = {row["step"] for row in coordinator}
    files = {name: [r for r in rows if any(int(s) in steps for s in r["arrived"])] for name, rows in files.items()}
    hops = node_hops(coordinator, files)
    last_sent: dict[int, float] = {}
    for batches in files.values():
        for batch in batches:
            for step, t in batch["sent"].items():
                last_sent[int(step)] = max(last_sent.get(int(step), 0.0), t)
    legs: dict[str, list[float]] = {"build": [], "return": [], "finish": [], "engine": [], "build cpu": []}
    done = sorted(row["done"] for row in coordinator)
    for row in coordinator:  # engine: from the last batch finished before this one was submitted (vLLM's own work)
        before = bisect.bisect_right(done, row["submit"])
        if before:
            legs["engine"].append(row["submit"] - done[before - 1])
    for row in coordinator:
        if not row["recv"] or row["step"] not in last_sent:
            continue
        legs["build"].append(row["sent"] - row["submit"])
        legs["build cpu"].append(row.get("cpu", 0.0))
        legs["return"].append(max(0.0, max(row["recv"]) - last_sent[row["step"]]))
        legs["finish"].append(row["done"] - max(row["recv"]))
    per_node = {name: {phase: _median_ms(h[phase] for h in hops if h["node"] == name) for phase in PHASES}
                for name in files}
    overhead = [h["in"] + h["assembly"] + h["post"] for h in hops]
    overhead += [r + f for r, f in zip(legs["return"], legs["finish"], strict=True)]
    cycles, rings = decode_cycles(coordinator, hops, last_sent), async_rings(hops, last_sent)
    return {"nodes": per_node, "coordinator": {k: _median_ms(v) for k, v in legs.items()},
            "hop_overhead_ms": _median_ms(overhead), "hop_overhead_p90_ms": _quantile_ms(overhead, 0.9),
            "steps": len(coordinator), "cycle": _means_ms(cycles, CYCLE), "cycle_steps": len(cycles),
            "ring": _means_ms(rings, RING), "ring_steps": len(rings)}


def _means_ms(rows: list[dict[str, float]], keys: tuple[str, ...]) -> dict[str, float]:
    return {k: 1e3 * statistics.fmean(row[k] for row in rows) for k in keys} if rows else {}


def decode_cycles(coordinator: list[dict], hops: list[dict], last_sent: dict[int, float]) -> list[dict[str, float]]:
    """Each decode step's cycle, from the previous batch's end to its own, in segments (seconds): vLLM's `engine`,
    the coordinator's `build`, every node's `in`, `wait` (queue + assembly), `compute` and `post` summed along the
    chain, the `return` leg and `finish`. Their means add up to the mean cycle, which at a fixed depth is what a
    token costs, so unlike the medians above they show what tails and queueing take from throughput. Only steps
    that crossed one chain (their segments add up to submit -> done; parallel routes do not) and whose every
    node batch was all decodes count."""
    by_step = _by_step(hops)
    done = sorted(row["done"] for row in coordinator)
    cycles = []
    for row in coordinator:
        chain = by_step.get(row["step"])
        before = bisect.bisect_right(done, row["submit"])
        if not (chain and row["recv"] and row["step"] in last_sent and before and all(h["decode"] for h in chain)):
            continue
        if any(h["held_at"] is not None for h in chain):  # async: its chain started from a token, not from here
            continue
        back = max(row["recv"])
        parts = {"build": row["sent"] - row["submit"], "in": sum(h["in"] for h in chain),
                 "wait": sum(h["queue"] + h["assembly"] for h in chain), "compute": sum(h["compute"] for h in chain),
                 "post": sum(h["post"] for h in chain), "return": max(0.0, back - last_sent[row["step"]]),
                 "finish": row["done"] - back}
        # 10 us: well above float64's rounding of epoch seconds, far below any segment a parallel route adds
        if abs(sum(parts.values()) - (row["done"] - row["submit"])) < 1e-5:
            cycles.append({"engine": row["submit"] - done[before - 1], **parts})
    return cycles


def async_rings(hops: list[dict], last_sent: dict[int, float]) -> list[dict[str, float]]:
    """Under async scheduling, each decode step that its first node held for its token, from the last node
    handing that token over to the step's own output queued by the last node, in segments along the chain (`in`:
    the token's hop, then each node's step; `wait`, `compute`, `post`). vLLM's engine and the coordinator's legs
    overlap the chain there, so they are not in it; at a fixed depth the mean ring is what a request's token
    costs. Steps whose segments do not add up (parallel routes) are left out."""
    rings = []
    for step, chain in _by_step(hops).items():
        firsts = [h for h in chain if h["held_at"] is not None]
        one_held = len(firsts) == 1 and firsts[0]["came"] is not None
        if not (one_held and step in last_sent and all(h["decode"] for h in chain)):
            continue
        parts = {"in": sum(h["in"] for h in chain), "wait": sum(h["queue"] + h["assembly"] for h in chain),
                 "compute": sum(h["compute"] for h in chain), "post": sum(h["post"] for h in chain)}
        if abs(sum(parts.values()) - (last_sent[step] - firsts[0]["came"])) < 1e-5:
            rings.append(parts)
    return rings


def _by_step(hops: list[dict]) -> dict[int, list[dict]]:
    by_step: dict[int, list[dict]] = {}
    for hop in hops:
        by_step.setdefault(hop["step"], []).append(hop)
    return by_step


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{'per hop (median ms)':<22}" + "".join(f"{p:>10}" for p in PHASES)]
    for name, phases in summary["nodes"].items():
        lines.append(f"{name:<22}" + "".join(f"{phases[p]:>10.2f}" for p in PHASES))
    c = summary["coordinator"]
    lines.append(f"{'coordinator':<22}" + "".join(f"{k:>10}" for k in c))
    lines.append(f"{'':<22}" + "".join(f"{v:>10.2f}" for v in c.values()))
    lines.append(f"per-hop overhead (in + assembly + post; return + finish): "
                 f"median {summary['hop_overhead_ms']:.2f} ms, p90 {summary['hop_overhead_p90_ms']:.2f} ms "
                 f"over {summary['steps']} steps")
    for key, what in (("cycle", "decode step cycle (mean ms over {} one-chain steps)"),
                      ("ring", "async ring, a last node's token to the next (mean ms over {} decode steps)")):
        if summary.get(key):
            segments = summary[key]
            total = sum(segments.values())
            lines.append(what.format(summary[f"{key}_steps"]) + ": "
                         + " + ".join(f"{k} {v:.2f}" for k, v in segments.items())
                         + f" = {total:.2f}; the forwards are {100 * segments['compute'] / total:.0f} % of it")
    return "\n".join(lines)


def _median_ms(values: Iterable[float]) -> float:
    values = list(values)
    return 1e3 * statistics.median(values) if values else float("nan")


def _quantile_ms(values: list[float], q: float) -> float:
    if len(values) < 2:
        return _median_ms(values)
    return 1e3 * statistics.quantiles(values, n=10)[int(q * 10) - 1]


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vllm_helix.trace",
                                     description="Per-hop table of a VLLM_HELIX_TRACE folder (docs/hot_path.md).")
    parser.add_argument("directory", type=Path, help="the folder VLLM_HELIX_TRACE named")
    directory = parser.parse_args().directory
    if not (directory / "coordinator.jsonl").is_file():
        parser.error(f"{directory}: no coordinator.jsonl here; run `vllm serve --executor helix` (and every "
                     f"`vllm-helix worker`) with {TRACE_ENV}={directory} first")
    summary = summarize(directory)
    if not summary["steps"]:
        parser.error(f"{directory / 'coordinator.jsonl'}: no traced steps in it")
    print(format_summary(summary))


if __name__ == "__main__":
    main()
