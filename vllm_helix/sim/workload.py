"""Workloads: bundled length/arrival traces, the reference trace generator (helix-spec §6.5), user traces.

A trace is a list of `Arrival(time_s, input_tokens, output_tokens)` sorted by time. The reference
generator draws everything from Python's MT19937; we use a private `random.Random(seed)` with the
reference's exact call interleaving (randint(bin) -> n x random() -> n x randint(length)), so the same
seed gives the same trace (§6.5 check values are tested) without touching the global `random`.
"""

from __future__ import annotations

import csv
import json
import math
import random
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from vllm_helix.errors import ClusterSpecError
from vllm_helix.text_files import parse_problem, read_text

DATASETS = ("azure_conv", "azure_code", "alpaca", "shared_gpt")
ARRIVAL_SOURCES = ("azure_conv", "azure_code")
BIN_SECONDS = 3
MAX_REQUESTS = 100_000  # per run: more takes hours of event handling (the reference's online run has ~1300)


@dataclass(frozen=True, slots=True)
class Arrival:
    time_s: float
    input_tokens: int
    output_tokens: int


@cache
def _lengths(dataset: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if dataset not in DATASETS:
        raise ClusterSpecError(f"unknown length dataset {dataset!r}; bundled: {DATASETS}")
    text = (resources.files("vllm_helix.data") / "traces" / f"{dataset}_lengths.csv").read_text()
    rows = list(csv.reader(text.splitlines()))[1:]
    return tuple(int(r[0]) for r in rows), tuple(int(r[1]) for r in rows)


@cache
def _arrival_bins(source: str) -> tuple[int, ...]:
    if source not in ARRIVAL_SOURCES:
        raise ClusterSpecError(f"unknown arrival source {source!r}; bundled: {ARRIVAL_SOURCES}")
    text = (resources.files("vllm_helix.data") / "traces" / f"{source}_arrivals_per_3s.csv").read_text()
    return tuple(int(line) for line in text.splitlines()[1:])


class LengthSampler:
    """Samples (input, output) pairs uniformly from a dataset (reference `LengthSampler`)."""

    def __init__(self, dataset: str = "azure_conv", rng: random.Random | None = None):
        self.inputs, self.outputs = _lengths(dataset)
        self.rng = rng if rng is not None else random.Random(0)

    @property
    def mean_total(self) -> float:
        n = len(self.inputs)
        return sum(self.inputs) / n + sum(self.outputs) / n  # the reference's float expression

    def sample(self) -> tuple[int, int]:
        i = self.rng.randint(0, len(self.inputs) - 1)
        return self.inputs[i], self.outputs[i]


def generate_trace(
    token_rate: float, duration_s: int, start_s: float = 0.0, seed: int = 0,
    dataset: str = "azure_conv", arrivals: str = "azure_conv",
) -> list[Arrival]:
    """Reference online trace: ~`token_rate` prompt+output tokens/s for `duration_s` (a multiple of 3)."""
    if duration_s <= 0 or duration_s % BIN_SECONDS:
        raise ClusterSpecError(f"trace duration must be a positive multiple of 3 s, got {duration_s}")
    if not 0 < token_rate < math.inf:
        raise ClusterSpecError(f"token rate must be > 0 and finite, got {token_rate}")
    rng = random.Random(seed)
    lengths = LengthSampler(dataset, rng)
    if (requests := token_rate * duration_s / lengths.mean_total) > MAX_REQUESTS:
        raise ClusterSpecError(f"{token_rate:g} tokens/s for {duration_s} s is about {requests:.3g} requests; a run "
                               f"takes at most {MAX_REQUESTS} (lower the rate or the duration)")
    bins = _arrival_bins(arrivals)
    request_rate = token_rate / lengths.mean_total
    scale = BIN_SECONDS * request_rate / (sum(bins) / len(bins))
    rates = [scale * b for b in bins]
    trace, carry = [], 0.0
    for interval in range(duration_s // BIN_SECONDS):
        raw = rates[rng.randint(0, len(rates) - 1)]
        n = round(raw + carry)
        carry = raw + carry - n
        times = sorted(start_s + interval * BIN_SECONDS + BIN_SECONDS * rng.random() for _ in range(n))
        for t in times:
            trace.append(Arrival(t, *lengths.sample()))
    return trace


def load_trace(path: str | Path, check: Callable[[Arrival], str | None] | None = None) -> list[Arrival]:
    """User trace, CSV (header with arrival_time_s,input_tokens,output_tokens) or JSONL (same keys).
    `check` says what is wrong with a request for the run it is for (None: nothing), reported with its line."""
    path = Path(path)
    text = read_text(path, "trace")
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
                    raise ClusterSpecError(f"{path}:{n}: not a JSON object: {parse_problem(exc)}") from None
    else:
        rows = _csv_rows(path, text)
    if len(rows) > MAX_REQUESTS:
        raise ClusterSpecError(f"{path}: {len(rows)} requests; a run takes at most {MAX_REQUESTS} (split the trace)")
    trace = []
    for n, row in rows:
        arrival = _row(path, n, row)
        if check is not None and (problem := check(arrival)):
            raise ClusterSpecError(f"{path}:{n}: {problem}")
        trace.append(arrival)
    if not trace:
        raise ClusterSpecError(f"{path}: trace has no requests")
    return sorted(trace, key=lambda a: a.time_s)


_TIME_KEYS = ("arrival_time_s", "arrival_time", "time_s", "time")


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(text.splitlines())
    try:
        columns = reader.fieldnames or []
        if len(set(columns)) != len(columns):
            raise ClusterSpecError(f"{path}:1: a column is named twice in the header {','.join(columns)[:200]}")
        rows = []
        for row in reader:
            if None in row:  # DictReader's key for fields past the header's
                raise ClusterSpecError(f"{path}:{reader.line_num}: more fields than the header's {len(columns)}")
            rows.append((reader.line_num, row))
        return rows
    except csv.Error as exc:  # e.g. a field past the csv module's 128 KiB limit
        raise ClusterSpecError(f"{path}:{reader.line_num + 1}: not CSV: {exc}") from None  # the row it was reading


def _row(path: Path, line: int, row: object) -> Arrival:
    where = f"{path}:{line}"
    if not isinstance(row, dict):
        raise ClusterSpecError(f"{where}: expected an object with arrival_time_s, input_tokens, output_tokens")
    key = next((k for k in _TIME_KEYS if k in row), None)
    if key is None:
        raise ClusterSpecError(f"{where}: missing arrival_time_s (columns: arrival_time_s,input_tokens,output_tokens)")
    for name in ("input_tokens", "output_tokens"):
        if row.get(name) is None:  # a CSV row short of the column reads as None
            raise ClusterSpecError(f"{where}: missing {name}")
    t = _number(where, key, row[key])
    inp, out = _count(where, "input_tokens", row["input_tokens"]), _count(where, "output_tokens", row["output_tokens"])
    if not (math.isfinite(t) and t >= 0):
        raise ClusterSpecError(f"{where}: {key}: need a finite arrival time >= 0 s, got {_shown(row[key])}")
    if inp < 1 or out < 1:
        raise ClusterSpecError(f"{where}: need token counts >= 1, got {_shown(row)}")
    return Arrival(t, inp, out)


def _number(where: str, key: str, value: object) -> float:
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except (ValueError, OverflowError):  # an int too large for a float overflows
            pass
    raise ClusterSpecError(f"{where}: {key}: arrival times must be numbers (seconds), got {_shown(value)}")


def _count(where: str, key: str, value: object) -> int:
    """A whole number of tokens: an int, or its digits (CSV); not a bool, not a fraction."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ClusterSpecError(f"{where}: {key}: token counts must be numbers (whole, >= 1), got {_shown(value)}")


def _shown(value: object) -> str:
    return reprlib.repr(value)  # a 5,000-digit number or a huge row, shortened
