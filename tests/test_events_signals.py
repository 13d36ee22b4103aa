"""SIGUSR1 ("reopen your logs") reaches the event writer through every front end that writes events: ``enforcer dns
--workers 2`` (the parent forwards it to the workers) and ``enforcer proxy`` (forwarded to mitmdump, where the addon
handles it). Without a handler SIGUSR1 terminates a process, so surviving it is half of the test; the other half is
that each writer lets go of its file and writes to the path again. Only loopback, only a made-up blocked name."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.conftest import ROOT, eventually, free_port

pytestmark = pytest.mark.e2e  # every test here starts real enforcer processes

BLOCKLIST = """\
app: t
policy:
  effective: 2023-10-30
block:
  - domain: blocked.example
    category: web
"""


def _holds(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == str(path):
                return True
    return False


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=10, check=False)
    return [int(x) for x in out.stdout.split()]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    # Its own session: a child left behind (a parent killed by an unhandled SIGUSR1 orphans it) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def lists(tmp_path: Path) -> Path:
    folder = tmp_path / "lists"
    folder.mkdir()
    (folder / "t.yaml").write_text(BLOCKLIST)
    return folder


def test_dns_workers_parent_forwards_sigusr1(tmp_path: Path, lists: Path) -> None:
    port = free_port()
    events = tmp_path / "dns.jsonl"
    cmd = [sys.executable, "-m", "enforcer", "dns", "--workers", "2", "--listen", f"127.0.0.1:{port}",
           "--upstream", f"127.0.0.1:{free_port()}", "--blocklist", str(lists), "--events", str(events)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
    try:
        assert proc.stdout is not None and b"listening on" in proc.stdout.readline()
        files = [tmp_path / "dns-w1.jsonl", tmp_path / "dns-w2.jsonl"]

        def query(n: int) -> None:
            for i in range(n):  # a new source port per query: the kernel spreads them over the workers
                q = dns.message.make_query(f"n{i}.blocked.example", "A")
                assert dns.query.udp(q, "127.0.0.1", port=port, timeout=3).answer

        query(60)
        eventually(lambda: all(_lines(f) > 0 for f in files) and sum(_lines(f) for f in files) == 60)
        workers = [c for c in _children(proc.pid) if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]
        assert len(workers) == 2
        assert all(any(_holds(w, f) for w in workers) for f in files)

        proc.send_signal(signal.SIGUSR1)
        eventually(lambda: not any(_holds(w, f) for w in workers for f in files))
        assert proc.poll() is None and all(Path(f"/proc/{w}").exists() for w in workers)
        query(60)
        eventually(lambda: sum(_lines(f) for f in files) == 120)
    finally:
        _stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def _blocked_request(port: int, name: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET http://{name}/ HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.split(b"\r\n", 1)[0]


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    def listening() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        return False

    eventually(listening, timeout=40, interval=0.1, message=lambda: f"proxy not listening:\n{log.read_text()[-3000:]}")


@pytest.fixture
def proxy(tmp_path: Path, lists: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    events = tmp_path / "proxy.jsonl"
    log = tmp_path / "mitmdump.log"
    cmd = [sys.executable, "-m", "enforcer", "proxy", "--listen", f"127.0.0.1:{port}", "--blocklist", str(lists),
           "--events", str(events), "--confdir", str(tmp_path / "confdir")]  # fmt: skip
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        _wait_port(port, proc, log)
        yield proc, port, events
    finally:
        _stop(proc, signal.SIGINT)


def test_proxy_forwards_sigusr1_to_the_addon(proxy: tuple[subprocess.Popen[bytes], int, Path]) -> None:
    proc, port, events = proxy
    assert _blocked_request(port, "a.blocked.example").split()[1] == b"403"
    eventually(lambda: _lines(events) == 1)
    mitmdump = _children(proc.pid)
    assert len(mitmdump) == 1 and _holds(mitmdump[0], events)

    proc.send_signal(signal.SIGUSR1)
    eventually(lambda: not _holds(mitmdump[0], events))
    assert proc.poll() is None and Path(f"/proc/{mitmdump[0]}").exists()
    assert _blocked_request(port, "b.blocked.example").split()[1] == b"403"
    eventually(lambda: _lines(events) == 2)

    # And an outside rotation without any signal: the next event goes to a new file at the path.
    events.rename(events.with_name("proxy.jsonl.1"))
    assert _blocked_request(port, "c.blocked.example").split()[1] == b"403"
    eventually(lambda: _lines(events) == 1)
    assert _lines(events.with_name("proxy.jsonl.1")) == 2


def test_serve_forwards_sigusr1_to_its_event_writers_only(tmp_path: Path, lists: Path) -> None:
    dns_port, proxy_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "enforcer", "serve", "--data-dir", str(tmp_path / "var"), "--blocklist", str(lists),
           "--dns-listen", f"127.0.0.1:{dns_port}", "--upstream", f"127.0.0.1:{free_port()}",
           "--dns-metrics", f"127.0.0.1:{free_port()}", "--proxy-listen", f"127.0.0.1:{proxy_port}",
           "--proxy-metrics", f"127.0.0.1:{free_port()}", "--analyst-listen", f"127.0.0.1:{free_port()}"]  # fmt: skip
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    descendants: list[int] = []  # serve starts each child in its own session: stopped one by one at the end
    try:
        eventually(
            lambda: b"Ctrl-C stops everything" in log.read_bytes(), timeout=60, message=lambda: log.read_text()[-3000:]
        )
        dns_events, proxy_events = tmp_path / "var/events/dns.jsonl", tmp_path / "var/events/proxy.jsonl"
        q = dns.message.make_query("a.blocked.example", "A")
        assert dns.query.udp(q, "127.0.0.1", port=dns_port, timeout=3).answer
        assert _blocked_request(proxy_port, "a.blocked.example").split()[1] == b"403"
        eventually(lambda: _lines(dns_events) == 1 and _lines(proxy_events) == 1)
        children = {Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0")[3].decode(): c for c in _children(proc.pid)}
        assert set(children) == {"dns", "proxy", "analyst"}
        mitmdump = _children(children["proxy"])[0]
        descendants += [*children.values(), mitmdump]
        assert _holds(children["dns"], dns_events) and _holds(mitmdump, proxy_events)

        proc.send_signal(signal.SIGUSR1)
        eventually(lambda: not _holds(children["dns"], dns_events) and not _holds(mitmdump, proxy_events))
        assert proc.poll() is None
        assert all(Path(f"/proc/{pid}").exists() for pid in [*children.values(), mitmdump])  # the analyst too
        assert dns.query.udp(q, "127.0.0.1", port=dns_port, timeout=3).answer
        assert _blocked_request(proxy_port, "b.blocked.example").split()[1] == b"403"
        eventually(lambda: _lines(dns_events) == 2 and _lines(proxy_events) == 2)
    finally:
        _stop(proc)
        for pid in descendants:  # left behind only if serve died (an unhandled SIGUSR1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
