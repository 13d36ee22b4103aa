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

from tests.conftest import BLOCKLISTS, ROOT, eventually, free_port


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
