"""A user's text file (cluster, placement, plan, trace, model config, profile), read and parsed with the one error
every reader gives: the file, what it was read as, and why it cannot be (missing, unreadable, not UTF-8, not
valid YAML or JSON, numbers past Python's limits, nesting too deep), on one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

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


def read_yaml(path: Path, what: str) -> Any:
    return _parsed(path, what, "YAML", yaml.safe_load)


def read_json(path: Path, what: str) -> Any:
    return _parsed(path, what, "JSON", json.loads)


def parse_problem(exc: Exception) -> str:
    """One line for a YAML or JSON parser's error (theirs span several lines, or name no position)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        problem = exc.problem or exc.context or "malformed"
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
    return str(exc).splitlines()[0]  # e.g. an integer past Python's 4300-digit limit (ValueError)


def _parsed(path: Path, what: str, language: str, parse: Callable[[str], Any]) -> Any:
    text = read_text(path, what)
    try:
        return parse(text)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise ClusterSpecError(f"{path}: cannot read {what}: not valid {language} ({parse_problem(exc)})") from None
