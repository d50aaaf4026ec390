"""Atomic writes: whole files or none, with the mode a plain open() would give."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cropper.core.fileio import atomic_path, write_text


def test_a_written_file_gets_the_umask_mode_not_owner_only(tmp_path: Path) -> None:
    write_text(tmp_path / "a.txt", "hello")
    (tmp_path / "plain.txt").write_text("hello")
    mode = stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("stopped")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
