"""The analyst refuses foreign Host headers (DNS rebinding) and every CSV neutralises formulas (issue 10, item 16).

Host: through the real aiohttp app (a real socket on 127.0.0.1) and a real ``enforcer analyst`` process. CSV: a table
of hostile values (client, device, app) through ``enforcer report --format csv`` and ``/api/report.csv``.
"""

from __future__ import annotations

import csv
import http.client
import io
import signal
import socket
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from enforcer.analyst.formats import csv_cell
from enforcer.analyst.web import Analyst, build_app
from tests.analyst.analyst_helpers import generate, local_analyst, write_events
from tests.conftest import BLOCKLISTS, ROOT, eventually, free_port

TOKEN = "host-test-token-0123456789"
PATHS = ("/api/events", "/api/report", "/api/report.csv", "/", "/metrics", "/healthz")


def _analyst(tmp_path: Path, policy: Any, **kw: Any) -> Analyst:
    write_events(tmp_path / "ev.jsonl", generate(policy, 30, seed=71))
    a = local_analyst(tmp_path, [str(tmp_path / "ev.jsonl")], **kw)
    a.ingester.poll_once()
    return a


def _foreign(port: int) -> list[str]:
    return [
        "attacker.example",
        f"attacker.example:{port}",
        f"127.0.0.1.attacker.example:{port}",
        f"localhost.attacker.example:{port}",
        f"127.0.0.2:{port}",
        "127.0.0.1",  # no port: only port 80 may omit it
        f"127.0.0.1:{port + 1}",
        f"localhost:{port}0",
        f"localhost:{port}:{port}",
        f"localhost:+{port}",
        f"[::1]{port}",
        f"[::2]:{port}",
        f"user@localhost:{port}",
        f"localhost\u3002:{port}",
        f"ｌｏｃａｌｈｏｓｔ:{port}",
        "",
    ]


def _own(port: int) -> list[str]:
    return [
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"LocalHost.:{port}",
        f"[::1]:{port}",
        f"[0:0:0:0:0:0:0:1]:{port}",
    ]


async def test_without_token_foreign_hosts_are_refused(aiohttp_client: Any, tmp_path: Path, policy) -> None:
    analyst = _analyst(tmp_path, policy)
    try:
        client = await aiohttp_client(build_app(analyst))
        port = client.port
        for host in _foreign(port):
            for path in PATHS:
                resp = await client.get(path, headers={"Host": host})
                body = await resp.text()
                assert resp.status == 403, (host, path, resp.status)
                assert "weixin" not in body and "wechat" not in body  # no data, not even counts
        for host in _own(port):
            if host.startswith("[0:"):
                continue  # not a spelling the analyst lists; refused (checked below)
            for path in PATHS:
                resp = await client.get(path, headers={"Host": host})
                assert resp.status == 200, (host, path, resp.status)
        assert (await client.get("/api/report", headers={"Host": f"[0:0:0:0:0:0:0:1]:{port}"})).status == 403
        metrics = await (await client.get("/metrics")).text()
        assert "enforcer_analyst_host_refused_total" in metrics
        assert analyst.host_refused == len(_foreign(port)) * len(PATHS) + 1
    finally:
        analyst.close()


async def test_allowed_host_names_and_token_decision(aiohttp_client: Any, tmp_path: Path, policy) -> None:
    # Configured names join the list; foreign names stay refused.
    analyst = _analyst(tmp_path / "a", policy, allowed_hosts=["Analyst.Example.ORG", "10.0.0.5"])
    try:
        client = await aiohttp_client(build_app(analyst))
        port = client.port
        for host in (f"analyst.example.org:{port}", f"10.0.0.5:{port}", f"localhost:{port}"):
            assert (await client.get("/api/report", headers={"Host": host})).status == 200, host
        assert (await client.get("/api/report", headers={"Host": f"attacker.example:{port}"})).status == 403
    finally:
        analyst.close()
    # With a token and no names: the token protects the data; any Host is served to a holder of the token, and a
    # rebinding page (which has no token) gets 401 and no data.
    analyst = _analyst(tmp_path / "b", policy, token=TOKEN)
    try:
        client = await aiohttp_client(build_app(analyst))
        headers = {"Host": "analyst.corp.example", "Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/api/report", headers=headers)).status == 200
        resp = await client.get("/api/report", headers={"Host": "attacker.example"})
        assert resp.status == 401 and "wechat" not in await resp.text()
    finally:
        analyst.close()
    # With a token and names: both apply.
    analyst = _analyst(tmp_path / "c", policy, token=TOKEN, allowed_hosts=["analyst.corp.example"])
    try:
        client = await aiohttp_client(build_app(analyst))
        port = client.port
        auth = {"Authorization": f"Bearer {TOKEN}"}
        ok = await client.get("/api/report", headers={**auth, "Host": f"analyst.corp.example:{port}"})
        assert ok.status == 200
        bad = await client.get("/api/report", headers={**auth, "Host": f"attacker.example:{port}"})
        assert bad.status == 403
    finally:
        analyst.close()


def _raw_get(port: int, request: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_real_process_refuses_rebinding_and_counts_it(tmp_path: Path, policy) -> None:
    write_events(tmp_path / "ev.jsonl", generate(policy, 30, seed=72))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "enforcer", "analyst", "--listen", f"127.0.0.1:{port}",
         "--events", str(tmp_path / "ev.jsonl"), "--db", str(tmp_path / "a.sqlite"),
         "--blocklist", str(BLOCKLISTS), "--allowed-host", "analyst.test"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def healthy() -> bool:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return True
            except OSError:
                pass
            assert proc.poll() is None
            return False

        eventually(healthy, timeout=20, interval=0.2, message="analyst did not answer /healthz")
        # What a browser sends after attacker.example was rebound to 127.0.0.1.
        assert _raw_get(port, f"GET /api/events HTTP/1.1\r\nHost: attacker.example:{port}\r\n\r\n".encode()) == 403
        # Two Host headers: refused even when one is right.
        two = f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: attacker.example\r\n\r\n"
        assert _raw_get(port, two.encode()) in (400, 403)
        assert _raw_get(port, f"GET /api/events HTTP/1.1\r\nHost: analyst.test:{port}\r\n\r\n".encode()) == 200
        assert _raw_get(port, f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()) == 200
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        line = next(x for x in text.splitlines() if x.startswith("enforcer_analyst_host_refused_total"))
        assert float(line.split()[-1]) >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err


# -- CSV ---------------------------------------------------------------------------------------------------------------
HOSTILE = [
    "=1+2",
    "+1",
    "-1",
    "@SUM(A1:A2)",
    "=cmd|' /C calc'!A0",
    "\t=1",
    "\r=1",
    "\n=1",
    "\tplain",
    " =1",
    "  @x",
    "\n\n=1",
    " \t-2",
    "＝1+2",
    "＋1",
    "－1",
    "＠SUM(A1)",
    "\u3000＝1",
    "﹦1",
    "﹢1",
    "﹣1",
    "﹫x",
]
HARMLESS = ["phone-0007", "a=b", "1-2", "10.1.2.7", "2001:db8::1", "wechat", "x@y"]


def _dangerous(cell: str) -> bool:
    """Independent of the code under test: would a spreadsheet read this cell as a formula?"""
    if cell[:1] in ("\t", "\r", "\n"):
        return True
    head = cell.lstrip()
    return bool(head) and unicodedata.normalize("NFKC", head[0])[:1] in "=+-@"


@pytest.mark.parametrize("value", HOSTILE + HARMLESS, ids=repr)
def test_csv_cell_table(value: str) -> None:
    out = csv_cell(value)
    if value in HOSTILE:
        assert _dangerous(value) and out == "'" + value
    else:
        assert not _dangerous(value) and out == value
    assert not _dangerous(out)


def _hostile_events(policy: Any) -> tuple[list, str]:
    """Events whose client and app are hostile, and one IP client whose inventory device name is hostile."""
    events = generate(policy, len(HOSTILE) + 1, seed=73)
    for ev, value in zip(events, HOSTILE, strict=False):
        ev.source_ip = value
    events[-1].source_ip = "10.1.2.7"
    events[0].app = '=HYPERLINK("http://x")'
    inventory = 'cidr,device,owner,unit\n10.1.2.7/32,"=HYPERLINK(""http://x"",""y"")",o,u\n'
    return events, inventory


def _check_csv(text: str) -> None:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert all(len(row) == 15 for row in rows), rows  # no value split a row
    assert rows[0][0] == "client"
    cells = [c for row in rows[1:] for c in row]
    assert not [c for c in cells if _dangerous(c)]
    clients = {row[0] for row in rows[1:]}
    assert {"'" + v for v in HOSTILE} <= clients
    assert any(row[1] == '\'=HYPERLINK("http://x","y")' for row in rows[1:])
    assert any(row[7] == '\'=HYPERLINK("http://x")' for row in rows[1:])  # the app column


def test_report_cli_csv_is_neutralised(tmp_path: Path, policy) -> None:
    events, inventory = _hostile_events(policy)
    write_events(tmp_path / "ev.jsonl", events)
    (tmp_path / "inv.csv").write_text(inventory, encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "enforcer", "report", "--events", str(tmp_path / "ev.jsonl"), "--format", "csv",
         "--inventory", str(tmp_path / "inv.csv"), "--blocklist", str(BLOCKLISTS)],
        capture_output=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    _check_csv(out.stdout.decode("utf-8"))  # bytes: a CR inside a quoted value must survive as it is


async def test_api_report_csv_is_neutralised(aiohttp_client: Any, tmp_path: Path, policy) -> None:
    events, inventory = _hostile_events(policy)
    write_events(tmp_path / "ev.jsonl", events)
    (tmp_path / "inv.csv").write_text(inventory, encoding="utf-8")
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev.jsonl")], inventory=str(tmp_path / "inv.csv"))
    try:
        assert analyst.ingester.poll_once() == len(events)
        client = await aiohttp_client(build_app(analyst))
        resp = await client.get("/api/report.csv")
        assert resp.status == 200
        _check_csv(await resp.text())
    finally:
        analyst.close()
