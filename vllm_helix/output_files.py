"""A file vllm-helix writes for the user (plan, cluster, profile): whole or not at all, with the one error every
writer gives: the file, what it was written as, and why it cannot be (a full disk, no permission)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from vllm_helix.errors import ConfigError


@contextlib.contextmanager
def replacing(path: str | Path, what: str) -> Iterator[Path]:
    """Yields where to write `path`'s new content: a file beside it that then replaces it, so a failed write
    leaves no half file (an existing one stays as it was). A path that is not a regular file (/dev/stdout, a
    pipe) is written directly: there is nothing to replace. Any OSError is a ConfigError naming `path`."""
    target = Path(path).resolve()  # through a symbolic link: replace the file it names, not the link
    try:
        if target.exists() and not target.is_file():
            yield Path(path)
            return
        temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            yield temp
            if target.exists():  # keep its mode (a new temp file has the umask's)
                os.chmod(temp, stat.S_IMODE(target.stat().st_mode))
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write {what} ({exc.strerror or exc})") from None


def write_text(path: str | Path, text: str, what: str) -> None:
    """Write `text` (UTF-8) to `path` as `replacing` does."""
    with replacing(path, what) as temp:
        temp.write_text(text, encoding="utf-8")
