"""``enforcer analyst`` as a process: the refusals (one line, exit 1) and a clean start/stop with /metrics."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BLOCKLISTS, ROOT, eventually, free_port, run_cli


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enforcer", "analyst", *args], capture_output=True, text=True, timeout=30, cwd=ROOT
    )


@pytest.mark.parametrize("listen", ["0.0.0.0:8000", "[::]:8000", "192.0.2.1:8000", "example.org:80"])
def test_refuses_non_loopback_without_token(listen: str, tmp_path: Path) -> None:
    out = _run("--listen", listen, "--db", str(tmp_path / "a.sqlite"))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen" in lines[0] and "--token-file" in lines[0]
    assert not (tmp_path / "a.sqlite").exists()  # refused before opening anything


def test_empty_token_file_and_bad_inventory(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n", encoding="utf-8")
    out = _run("--token-file", str(tmp_path / "token"), "--db", str(tmp_path / "a.sqlite"))
    assert out.returncode == 1 and out.stderr.strip().endswith("is empty")
    (tmp_path / "inv.csv").write_text("10.0.0.0/8,dev,o,u\nnot-a-cidr,x,y,z\n", encoding="utf-8")
    out = _run("--inventory", str(tmp_path / "inv.csv"), "--db", str(tmp_path / "a.sqlite"), "--listen", "127.0.0.1:0")
    assert out.returncode == 1 and "inv.csv:2: invalid CIDR" in out.stderr
    (tmp_path / "latin1").write_bytes(b"r\xe9mi:secret\n")
    out = _run("--token-file", str(tmp_path / "latin1"), "--db", str(tmp_path / "a.sqlite"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().endswith("latin1:1: --token-file is not UTF-8 text (byte 0xe9: save it as UTF-8)")


def test_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "token").write_text("tok\n", encoding="utf-8")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "enforcer", "analyst", "--listen", f"127.0.0.1:{port}",
            "--events", str(tmp_path / "none.jsonl"), "--db", str(tmp_path / "a.sqlite"),
            "--blocklist", str(BLOCKLISTS), "--token-file", str(tmp_path / "token"),
        ],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    return str(resp.read().decode())
            except OSError:
                assert proc.poll() is None
                return None

        text = eventually(scrape, timeout=20, interval=0.2, message="analyst did not serve /metrics")
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"enforcer_noncompliant_clients", "enforcer_analyst_events_ingested"} <= names
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/report", timeout=2)
        assert info.value.code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err


def test_bad_blocklist_is_one_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "app: wechat\npolicy:\n  effective: not-a-date\nblock:\n  - domain: weixin.qq.com\n", encoding="utf-8"
    )
    out = _run("--blocklist", str(bad), "--db", str(tmp_path / "a.sqlite"), "--listen", "127.0.0.1:0")
    assert out.returncode == 1
    assert all(line.startswith(f"{bad}:") for line in out.stderr.strip().splitlines()), out.stderr


def test_missing_token_file_names_the_file_and_create_token(tmp_path: Path) -> None:
    for missing in (tmp_path / "token", tmp_path / "no-such-dir" / "token"):
        out = _run("--token-file", str(missing), "--db", str(tmp_path / "a.sqlite"))
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1, out.stderr
        assert str(missing) in lines[0] and "--create-token" in lines[0] and "No such file" not in lines[0]
        assert not missing.exists()


def test_create_token_writes_0600_once_then_reuses(tmp_path: Path) -> None:
    # A bad inventory stops the analyst after the token is handled, so no server has to be stopped.
    (tmp_path / "inv.csv").write_text("not-a-cidr,x,y,z\n", encoding="utf-8")
    token_file = tmp_path / "analyst.token"
    common = ("--token-file", str(token_file), "--create-token", "--inventory", str(tmp_path / "inv.csv"))
    first = _run(*common, "--db", str(tmp_path / "a.sqlite"), "--listen", "127.0.0.1:0")
    assert first.returncode == 1 and "inv.csv:1: invalid CIDR" in first.stderr
    token = token_file.read_text(encoding="utf-8").strip()
    assert len(token) >= 24 and token_file.stat().st_mode & 0o777 == 0o600
    created = [line for line in first.stderr.splitlines() if token in line]
    assert len(created) == 1 and str(token_file) in created[0]
    second = _run(*common, "--db", str(tmp_path / "a.sqlite"), "--listen", "127.0.0.1:0")
    assert second.returncode == 1 and token not in second.stderr + second.stdout
    assert token_file.read_text(encoding="utf-8").strip() == token  # reused, not replaced
    out = _run("--create-token", "--db", str(tmp_path / "a.sqlite"))
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0 and "--token-file" in out.stderr


@pytest.mark.parametrize(
    ("header", "first"),
    [("ip,device,owner,unit", "ip"), ("network,name,owner,unit", "network"), ("address", "address")],
)
def test_wrong_inventory_header_names_the_expected_one(header: str, first: str, tmp_path: Path) -> None:
    inv = tmp_path / "bad2.csv"
    inv.write_text(f"{header}\n10.0.0.0/8,dev,o,u\n", encoding="utf-8")
    out = run_cli("report", "--inventory", str(inv), "--events", str(tmp_path))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert lines[0].startswith(f"{inv}:1: ") and repr(first) in lines[0] and "cidr,device,owner,unit" in lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # 0 or NaN spun a core; inf killed the ingest thread while /healthz said ok
        (("--poll-interval", "0"), "argument --poll-interval: 0 is outside 0.05..3600 seconds"),
        (("--poll-interval", "nan"), "argument --poll-interval: nan is outside"),
        (("--poll-interval", "inf"), "argument --poll-interval: inf is outside"),
        # the cut-off overflowed SQLite's integers and every poll failed on it
        (("--retention", "999999y"), "--retention '999999y': at most 1000y (or 'forever')"),
        (("--retention", "30m"), "--retention '30m': give a period such as 90d"),
    ],
)
def test_out_of_range_intervals_are_refused_at_start(tmp_path: Path, args: tuple[str, str], expected: str) -> None:
    out = _run(*args, "--db", str(tmp_path / "a.sqlite"), "--listen", "127.0.0.1:0")
    assert out.returncode in (1, 2) and expected in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "a.sqlite").exists()


def test_a_db_that_is_no_store_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an SQLite file\n" * 100, encoding="utf-8")
    for db, why in ((tmp_path / "notes.txt", "file is not a database"), (tmp_path, "unable to open database file")):
        out = _run("--db", str(db), "--listen", "127.0.0.1:0", "--events", str(tmp_path / "none.jsonl"))
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.strip().splitlines()[-1] == f"analyst: --db {db}: cannot open the store: {why}"
