"""The documents stay true to the code: their examples import what exists, their paths exist, doctests pass."""

import ast
import doctest
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_examples_compile_and_import_what_exists(doc):
    for block in _python_blocks(doc.read_text()):
        tree = ast.parse(block)  # a SyntaxError names the document's example
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vllm_helix"):
                module = importlib.import_module(node.module)
                missing = [a.name for a in node.names if not hasattr(module, a.name)]
                assert not missing, f"{doc.name}: {node.module} has no {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_paths_named_in_the_documents_exist(doc):
    paths = set(re.findall(r"\b((?:vllm_helix|tests|bench|examples|scripts|csrc|docs)/[\w./-]*\w)", doc.read_text()))
    # a prefix may stand for several files, e.g. csrc/transport.{hpp,cpp}
    missing = sorted(p for p in paths if not (ROOT / p).exists() and not list(ROOT.glob(p + ".*")))
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doctests_in_the_documents_pass(doc):
    result = doctest.testfile(str(doc), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
