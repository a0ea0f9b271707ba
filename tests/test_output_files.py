"""Output files (vllm_helix/output_files.py): written whole or not at all, a failure one error naming the file."""

import errno
import os
from pathlib import Path

import pytest

from vllm_helix.errors import ConfigError
from vllm_helix.output_files import replacing, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_half_file(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("old\n")
    full = pytest.raises(ConfigError, match=r"plan.yaml: cannot write plan \(No space left on device\)$")
    with full, replacing(plan, "plan") as temp:
        temp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert plan.read_text() == "old\n" and os.listdir(tmp_path) == ["plan.yaml"]


def test_a_write_replaces_the_file_a_link_names_and_keeps_its_mode(tmp_path):
    real, link = tmp_path / "real.yaml", tmp_path / "link.yaml"
    real.write_text("old")
    real.chmod(0o600)
    link.symlink_to(real)
    write_text(link, "new", "cluster")
    assert link.is_symlink() and real.read_text() == "new" and real.stat().st_mode & 0o777 == 0o600
    assert sorted(os.listdir(tmp_path)) == ["link.yaml", "real.yaml"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a full disk)")
def test_a_device_is_written_through_and_a_full_one_is_an_error():
    with pytest.raises(ConfigError, match=r"^/dev/full: cannot write profile \(No space left on device\)$"):
        write_text("/dev/full", "x" * 100_000, "profile")
    assert Path("/dev/full").is_char_device()  # not replaced by a file
