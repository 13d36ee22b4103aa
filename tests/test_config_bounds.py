"""``--config`` is read like a blocklist: a FIFO, a device, an oversized or non-UTF-8 file, or deep nesting is one
``FILE:LINE:COL`` line and exit 1 (before: a hang, a RecursionError or a UnicodeDecodeError traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _fifo(tmp: Path) -> tuple[Path, str]:
    path = tmp / "c.yaml"
    os.mkfifo(path)
    return path, "1:1: cannot read config: not a regular file (a FIFO)"


def _device(tmp: Path) -> tuple[Path, str]:
    path = tmp / "c.yaml"
    path.symlink_to("/dev/zero")
    return path, "1:1: cannot read config: not a regular file (a character device)"


def _oversized(tmp: Path) -> tuple[Path, str]:
    path = tmp / "c.yaml"
    with open(path, "wb") as fh:
        fh.truncate(2 * 1024 * 1024)
    return path, f"1:1: cannot read config: file too large ({2 * 1024 * 1024} bytes; the limit is 1048576)"


def _not_utf8(tmp: Path) -> tuple[Path, str]:
    path = tmp / "c.yaml"
    path.write_bytes(b"dns:\n  listen: \xff\n")
    return path, "1:1: cannot read config: not UTF-8 text: invalid start byte"


def _deep(tmp: Path) -> tuple[Path, str]:
    path = tmp / "c.yaml"
    path.write_text("dns:\n  listen: " + "[" * 3000 + "]" * 3000 + "\n")
    return path, "2:41: YAML syntax error: nesting deeper than 32 levels"


@pytest.mark.parametrize("make", [_fifo, _device, _oversized, _not_utf8, _deep], ids=lambda f: f.__name__[1:])
def test_bad_config_file_is_one_line_and_exit_1(tmp_path: Path, make: Callable[[Path], tuple[Path, str]]) -> None:
    path, message = make(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "enforcer", "check", "--config", str(path), str(ROOT / "blocklists")],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"{path}:{message}"]
