"""Parse quantities with explicit units: bandwidth, sizes and durations.

Internally everything is SI base units: bytes, bytes per second, seconds.

>>> parse_bandwidth("10Gbps")
1250000000.0
>>> parse_bandwidth("1.25GB/s")
1250000000.0
>>> parse_duration("1ms")
0.001
>>> parse_size("24GiB")
25769803776.0
"""

from __future__ import annotations

import math
import re

_NUMBER_UNIT = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z/]*)\s*$")

# bits per second (lower-case b) and bytes per second (B/s); SI prefixes are powers of 1000.
_BANDWIDTH = {
    "bps": 1 / 8, "kbps": 1e3 / 8, "mbps": 1e6 / 8, "gbps": 1e9 / 8, "tbps": 1e12 / 8,
    "b/s": 1.0, "kb/s": 1e3, "mb/s": 1e6, "gb/s": 1e9, "tb/s": 1e12,
    "kib/s": 2**10, "mib/s": 2**20, "gib/s": 2**30,
}
_SIZE = {
    "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_DURATION = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "min": 60.0}


def _split(text: str | int | float, what: str) -> tuple[float, str]:
    if isinstance(text, bool):
        raise ValueError(f"expected a {what} with a unit, got {text!r}")
    if isinstance(text, int | float):
        raise ValueError(f"{text!r} has no unit; write the {what} with one, e.g. {_EXAMPLES[what]}")
    match = _NUMBER_UNIT.match(str(text))
    if not match:
        raise ValueError(f"cannot read {text!r} as a {what}, e.g. {_EXAMPLES[what]}")
    return float(match.group(1)), match.group(2)


_EXAMPLES = {"bandwidth": "'10Gbps' or '1.25GB/s'", "size": "'24GiB' or '16GB'", "duration": "'1ms' or '0.5s'"}


def _scale(value: float, key: str, table: dict[str, float], what: str, original: object) -> float:
    if key not in table:
        raise ValueError(f"unknown {what} unit in {original!r}; use one of {sorted(table)}")
    if value < 0:
        raise ValueError(f"{what} {original!r} must not be negative")
    scaled = value * table[key]
    if not math.isfinite(scaled):  # '1e400GB', '1e300TB': past what a float holds
        raise ValueError(f"{what} {original!r} is out of range")
    return scaled


def parse_bandwidth(text: str) -> float:
    """'10Gbps' (bits per second) or '1.25GB/s' (bytes per second) -> bytes per second."""
    value, unit = _split(text, "bandwidth")
    if unit.lower().endswith("bps"):
        return _scale(value, unit.lower(), _BANDWIDTH, "bandwidth", text)
    if unit.endswith("/s") and unit[:-2].endswith("B"):
        return _scale(value, unit.lower(), _BANDWIDTH, "bandwidth", text)
    raise ValueError(f"cannot read {text!r} as a bandwidth: write bits as 'Gbps' or bytes as 'GB/s'")


def parse_size(text: str) -> float:
    """'24GiB', '16GB', '512MB' -> bytes."""
    value, unit = _split(text, "size")
    return _scale(value, unit.lower(), _SIZE, "size", text)


def parse_duration(text: str) -> float:
    """'1ms', '0.5s', '20us' -> seconds."""
    value, unit = _split(text, "duration")
    return _scale(value, unit.lower(), _DURATION, "duration", text)


def format_bandwidth(bytes_per_s: float) -> str:
    """Bytes/s -> a human string in bytes ('1.25GB/s')."""
    for scale, unit in ((1e12, "TB/s"), (1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s")):
        if bytes_per_s >= scale:
            return f"{bytes_per_s / scale:.6g}{unit}"
    return f"{bytes_per_s:.6g}B/s"


def format_size(n_bytes: float) -> str:
    for scale, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.6g}{unit}"
    return f"{n_bytes:.6g}B"
