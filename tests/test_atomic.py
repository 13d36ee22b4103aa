"""write_atomic: whole or nothing, the asked mode, no temporary file left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from enforcer.atomic import write_atomic


def test_writes_whole_with_mode_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "view.json"
    write_atomic(path, b"one", mode=0o600)
    assert path.read_bytes() == b"one" and stat.S_IMODE(path.stat().st_mode) == 0o600
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(os.listdir(path.parent)) == ["view.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "feed.txt"
    write_atomic(path, b"old")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["feed.txt"]
