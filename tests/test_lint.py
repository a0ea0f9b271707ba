"""The style and types the project holds itself to (pyproject's [tool.ruff], [tool.mypy]), checked with the tests."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff", path=str(Path(sys.executable).parent)) is None
                    and shutil.which("ruff") is None, reason="ruff is in the dev extras")
def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    done = subprocess.run([ruff, "check", "--output-format", "concise", str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _dev_tool(name: str) -> str | None:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


@pytest.mark.skipif(_dev_tool("mypy") is None, reason="mypy is in the dev extras")
def test_mypy_finds_nothing():
    done = subprocess.run([_dev_tool("mypy")], cwd=ROOT, capture_output=True, text=True)  # files: pyproject
    assert done.returncode == 0, done.stdout + done.stderr
