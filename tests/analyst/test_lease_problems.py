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


KEA4 = "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context\n"


def _kea(address: str, mac: str, hostname: str) -> str:
    return f"{address},{mac},,86400,1999999999,1,0,0,{hostname},0,\n"


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        # str.isdigit() takes a superscript two, int() does not (a traceback out of the report and the analyst)
        ("dnsmasq.leases", "1999999999 02:00:00:00:0a:01 10.0.0.1 a *\n² 02:00:00:00:0a:02 10.0.0.2 b *\n", ":2: "),
        # \999 is no octal escape (int(..., 8) raised)
        (
            "dhcpd.leases",
            "lease 10.0.0.1 {\n  starts 5 2024/03/01 00:00:00;\n  hardware ethernet 02:00:00:00:0a:01;\n"
            '  uid "\\999abc";\n}\n',
            None,
        ),
        # an unclosed quote, a field over the csv module's limit (csv.Error out of the whole file)
        ("kea-leases4.csv", KEA4 + _kea("10.0.0.1", "02:00:00:00:0a:01", "a") + '10.0.0.2,"x\n', ":3: "),
        (
            "kea-leases4.csv",
            KEA4 + _kea("10.0.0.1", "02:00:00:00:0a:01", "h" * 200_000) + _kea("10.0.0.2", "02:00:00:00:0a:02", "b"),
            ":2: not a CSV line",
        ),
        # a spreadsheet's BOM and CRLF; a malformed first line of a dnsmasq file (it made the whole file unknown)
        ("kea-leases4.csv", "\ufeff" + (KEA4 + _kea("10.0.0.1", "02:00:00:00:0a:01", "a")).replace("\n", "\r\n"), None),
        (
            "dnsmasq.leases",
            "1709380800 02:00:00:00:0a:09 10.0.0.9\n1999999999 02:00:00:00:0a:01 10.0.0.1 a *\n",
            ":1: ",
        ),
        # a lifetime over Kea's 32 bits put the lease's start at 1970, naming every earlier event from the address
        (
            "kea-leases4.csv",
            KEA4
            + "10.0.0.2,02:00:00:00:0a:02,,100000000000000000000000000,1999999999,1,0,0,b,0,\n"
            + _kea("10.0.0.1", "02:00:00:00:0a:01", "a"),
            ":2: lifetime 100000000000000000000000000",
        ),
        # int() of over 4,300 digits raises: the one line was a whole file unread (and the report stopped)
        (
            "dnsmasq.leases",
            "9" * 5000 + " 02:00:00:00:0a:09 10.0.0.9 b *\n1999999999 02:00:00:00:0a:01 10.0.0.1 a *\n",
            ":1: ",
        ),
    ],
    ids=[
        "dnsmasq-superscript",
        "dhcpd-uid-not-octal",
        "kea-open-quote",
        "kea-huge-field",
        "kea-bom-crlf",
        "dnsmasq-bad-first",
        "kea-lifetime-over-32-bits",
        "dnsmasq-5000-digit-expiry",
    ],
)
def test_a_malformed_lease_line_is_skipped_and_the_rest_read(
    tmp_path: Path, name: str, text: str, problem: str | None
) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    (tmp_path / "e.jsonl").write_text("", encoding="utf-8")
    out = _report("--events", str(tmp_path / "e.jsonl"), "--leases", str(path))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    if problem is not None:
        assert f"skipped 1 malformed lease line(s); first: {path}{problem}" in out.stderr, out.stderr
    from enforcer.analyst.leases import load

    files = load([str(path)])
    assert len(files.book) == 1 and files.skipped == (problem is not None)


@pytest.mark.parametrize("tail", [b"\0", b" "], ids=["nul", "spaces"])
def test_a_dhcpd_file_cut_short_is_read_in_linear_time(tmp_path: Path, tail: bytes) -> None:
    """A crash leaves a lease file ending in NUL bytes or spaces, with no ``;`` after them: each statement was
    searched for from every position to the end (64 KB took a minute, 1 MB hours, and the analyst never started),
    then the spaces split every way between two overlapping repeats. Bounded by the subprocess's timeout, so a
    regression fails instead of hanging the run."""
    path = tmp_path / "dhcpd.leases"
    path.write_bytes(
        b"lease 10.0.0.1 {\n  starts 5 2024/03/01 00:00:00;\n  hardware ethernet 02:00:00:00:0a:01;\n}\n"
        + b"lease 10.0.0.2 {\n  starts 5 2024/03/01 00:00:00;"
        + tail * 1_000_000
    )
    (tmp_path / "e.jsonl").write_text("", encoding="utf-8")
    out = _report("--events", str(tmp_path / "e.jsonl"), "--leases", str(path))  # timeout=60
    assert out.returncode == 0 and f"first: {path}:6: unterminated lease block" in out.stderr, out.stderr


def test_blank_lines_and_comments_of_a_dhcpd_file_are_read_in_linear_time(tmp_path: Path) -> None:
    """The comment pattern's leading blanks ran across newlines: a run of blank lines with no comment after it took
    hours, and one with a comment after it was deleted with the comment, so later problems named the wrong line."""
    path = tmp_path / "dhcpd.leases"
    lease = "lease 10.0.0.{n} {{\n  starts 5 2024/03/01 00:00:00;\n  hardware ethernet 02:00:00:00:0a:0{n};\n}}\n"
    text = (
        lease.format(n=1) + "\n" * 500_000 + "  # a comment\n" + lease.format(n=2)
        + "\n" * 500_000 + "lease 10.0.0.3 {\n  starts 5 2024/03/01 00:00:00;"
    )  # fmt: skip
    path.write_text(text, encoding="utf-8")
    (tmp_path / "e.jsonl").write_text("", encoding="utf-8")
    out = _report("--events", str(tmp_path / "e.jsonl"), "--leases", str(path))  # timeout=60
    last = text.count("\n") + 1
    assert out.returncode == 0 and f"first: {path}:{last}: unterminated lease block" in out.stderr, out.stderr
    from enforcer.analyst.leases import load

    files = load([str(path)])
    assert len(files.book) == 2 and files.skipped == 1
