"""Drift checks: every seam of the ledger (vllm_helix/seams.py) still holds on the installed vLLM."""

from pathlib import Path

import pytest

from vllm_helix import seams
from vllm_helix.errors import EngineStartError, SeamDrift
from vllm_helix.node import seam
from vllm_helix.node.config import WorkerConfig

LEDGER_DOC = Path(__file__).resolve().parents[1] / "docs" / "seams.md"


def test_installed_vllm_is_in_the_supported_range():
    seams.check_vllm_version()


@pytest.mark.parametrize("version", ["0.10.2", "0.31.0", "0.33.0", "0.40.0", "1.0.0", "dev"])
def test_unsupported_vllm_versions_are_refused_with_the_range(version):
    with pytest.raises(EngineStartError, match=r">= 0\.32 and < 0\.33"):
        seams.check_vllm_version(version)


@pytest.mark.parametrize("entry", seams.SEAMS, ids=lambda s: s.name)
def test_seam_still_holds(entry):
    entry.check()


def test_cuda_installs_pin_the_verified_release_inside_the_supported_range():
    root = LEDGER_DOC.parents[1]
    seams.check_vllm_version(seams.VERIFIED_VLLM)
    pin = f'"vllm=={seams.VERIFIED_VLLM}"'
    assert pin in (root / "scripts" / "setup.sh").read_text() and pin in (root / "setup.py").read_text()


def test_a_seam_that_vllm_changed_fails_naming_the_seam(monkeypatch):
    import vllm.distributed.utils as dutils

    monkeypatch.setattr(dutils, "get_pp_indices", lambda layers, rank, size: (0, layers))
    layer_range = next(s for s in seams.SEAMS if s.name == "layer-range")
    with pytest.raises(SeamDrift, match=r"seam 'layer-range' \(node/seam.LayerRange\).*get_pp_indices args"):
        layer_range.check()


def test_the_ledger_document_lists_every_seam_of_the_registry():
    rows = [line for line in LEDGER_DOC.read_text().splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [s.name for s in seams.SEAMS]
    for row, entry in zip(rows, seams.SEAMS, strict=True):
        assert f"`{entry.where}`" in row and entry.why in row and entry.until in row


def test_nodes_with_different_layers_get_different_compile_cache_keys(tiny_llama_path):
    """vLLM keys its torch.compile cache on the config hash: two ranges of one model must not share it."""
    config = WorkerConfig(max_num_batched_tokens=64, max_num_seqs=8, max_model_len=256, dtype="float32")
    kwargs = dict(dtype="float32", kv_cache_bytes=1 << 24)
    first = seam.make_vllm_config(str(tiny_llama_path), config, layers=(0, 3), **kwargs)
    second = seam.make_vllm_config(str(tiny_llama_path), config, layers=(3, 8), **kwargs)
    again = seam.make_vllm_config(str(tiny_llama_path), config, layers=(0, 3), **kwargs)
    assert first.compute_hash() != second.compute_hash()
    assert first.compute_hash() == again.compute_hash()
