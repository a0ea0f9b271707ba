"""A user's text file (cluster, placement, plan, trace, model config, profile), read with the one error every
reader gives: the file, what it was read as, and why it cannot be (missing, unreadable, not UTF-8)."""

from __future__ import annotations

from pathlib import Path

from vllm_helix.errors import ClusterSpecError


def read_text(path: Path, what: str) -> str:
    """`path`'s text; ClusterSpecError naming the file and `what` when it cannot be read or is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ClusterSpecError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ClusterSpecError(f"{path}: cannot read {what}: not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                               f"at offset {exc.start}); save it as UTF-8") from None
