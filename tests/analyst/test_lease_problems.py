"""A ``--leases`` path that is wrong: missing, a folder, a FIFO, or a file that is no lease file. ``enforcer report``
refuses it in one line (exit 1); the analyst, which follows files that may appear later (Kea not started yet), logs
each problem once and keeps serving. Either way it never passes unnoticed while every device is named by its bare
address, and a FIFO never blocks the read."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from enforcer.analyst.identity import AnalystIdentity
from enforcer.analyst.inventory import Inventory
from tests.conftest import ROOT


def _report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enforcer", "report", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def _wrong(tmp_path: Path, kind: str) -> tuple[Path, str]:
    path = tmp_path / f"{kind}.leases"
    if kind == "missing":
        return path, "no such lease file"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("hello, this is not a lease file\n", encoding="utf-8")
    return path, "not a lease file" if kind == "not-leases" else "cannot read lease file: not a regular file"


@pytest.mark.parametrize("kind", ["missing", "folder", "fifo", "not-leases"])
def test_report_refuses_a_wrong_lease_path_in_one_line(tmp_path: Path, kind: str) -> None:
    (tmp_path / "e.jsonl").write_text("", encoding="utf-8")
    path, expected = _wrong(tmp_path, kind)
    out = _report("--events", str(tmp_path / "e.jsonl"), "--leases", str(path))
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}:1: {expected}"), out.stderr


def test_analyst_logs_each_lease_problem_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = [_wrong(tmp_path, kind)[0] for kind in ("missing", "folder", "fifo", "not-leases")]
    with caplog.at_level(logging.WARNING, logger="enforcer.analyst.identity"):
        ident = AnalystIdentity([str(p) for p in paths], 60, Inventory())  # reads them once: a FIFO must not block
        ident.refresh()
        ident.refresh()
    logged = [r.getMessage() for r in caplog.records if r.name == "enforcer.analyst.identity"]
    assert len(logged) == len(paths), logged  # one each, not one each per refresh
    for path, message in zip(paths, logged, strict=True):
        assert message.startswith(f"leases: {path}:1: "), message
    assert "No such file or directory" in logged[0] and "not a regular file" in logged[1] + logged[2]
    assert "not a lease file" in logged[3]
    assert len(ident.files.book) == 0
