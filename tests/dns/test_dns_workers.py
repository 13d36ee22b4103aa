"""`enforcer dns --workers 2`: two processes share the listen address (SO_REUSEPORT), one /metrics adds them up,
each writes its own event file, an edit reaches both, a killed worker is replaced, SIGTERM stops all."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import dns.exception
from dnshelpers import BLOCKLISTS, DnsProcess
from fakeupstream import FakeUpstream

from tests.conftest import eventually


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=10)
    return [int(x) for x in out.stdout.split()]


def _workers(pid: int) -> list[int]:
    # spawn's resource tracker is a child too; workers are the ones running the resolver. A child that exits between
    # pgrep and the read (the killed worker) is no worker.
    out = []
    for c in _children(pid):
        try:
            if b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes():
                out.append(c)
        except FileNotFoundError:
            continue
    return out


def test_two_workers_share_the_address_and_the_metrics(tmp_path: Path) -> None:
    bl = tmp_path / "blocklists"
    shutil.copytree(BLOCKLISTS, bl)
    up = FakeUpstream()
    proc = DnsProcess(tmp_path, "--workers", "2", "--blocklist", str(bl), "--upstream", up.address)
    try:
        assert "2 workers" in proc.lines[0]
        pids = _workers(proc.proc.pid)
        assert len(pids) == 2
        for _ in range(200):  # a new source port per query: the kernel spreads them over the workers
            assert proc.query("weixin.qq.com").answer[0][0].to_text() == "0.0.0.0"
        assert proc.metric("enforcer_dns_queries_total", outcome="blocked") == 200
        assert proc.metric("enforcer_dns_workers") == 2

        def event_counts() -> list[int]:
            return [len(f.read_text().splitlines()) for f in sorted(tmp_path.glob(f"{proc.events.stem}-w*.jsonl"))]

        counts = eventually(
            lambda: c if sum(c := event_counts()) == 200 else None, 10, 0.2, lambda: str(event_counts())
        )
        assert len(counts) == 2 and sum(counts) == 200 and min(counts) > 0, counts

        # An edit reaches both workers (each watches the files).
        wechat = bl / "wechat.yaml"
        wechat.write_text(wechat.read_text().replace("block:\n", "block:\n  - domain: newly-banned.example\n"
                                                     "    category: web\n", 1))  # fmt: skip
        eventually(lambda: proc.metric("enforcer_policy_reloads_total", result="success") >= 4, 10, 0.2)
        answers = {proc.query("newly-banned.example").answer[0][0].to_text() for _ in range(50)}
        assert answers == {"0.0.0.0"}

        # A worker that dies is replaced; the address keeps answering meanwhile.
        os.kill(pids[0], signal.SIGKILL)
        # A query that reached the dying worker is lost, as with any server crash; a stub resolver retries from a
        # new source port, which the kernel hashes to a live worker.
        for _attempt in range(5):
            try:
                answer = proc.query("kaspersky.com", timeout=1.0).answer[0][0].to_text()
                break
            except dns.exception.Timeout:
                continue
        assert answer == "0.0.0.0"
        eventually(lambda: len(w := _workers(proc.proc.pid)) == 2 and pids[0] not in w, 30, 0.2, "no replacement")
        eventually(lambda: proc.metric("enforcer_dns_workers") >= 2, 10, 0.2)
        assert proc.metric("enforcer_dns_workers") == 2
    finally:
        code = proc.stop()
        up.close()
    assert code == 0, proc.stderr_text()
    assert _children(proc.proc.pid) == []


def test_workers_apply_the_hardening_options_and_sum_their_outcomes(tmp_path: Path) -> None:
    """--allow, --tcp-max-per-source and --max-cache-ttl reach every worker; /metrics adds the new outcomes."""
    up = FakeUpstream(ttl=7200)
    proc = DnsProcess(tmp_path, "--workers", "2", "--blocklist", str(BLOCKLISTS), "--upstream", up.address,
                      "--allow", "127.0.0.1/32", "--tcp-max-per-source", "2", "--max-cache-ttl", "60")  # fmt: skip
    held: list[socket.socket] = []
    try:
        assert proc.query("ttl.example").answer[0].ttl == 60
        for _ in range(6):  # an outsider: a 12-byte REFUSED from whichever worker the kernel picks
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.2", 0))
                s.settimeout(3)
                s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc", ("127.0.0.1", proc.port))
                reply = s.recv(512)
                assert len(reply) == 12 and reply[3] & 0x0F == 5
        for _ in range(10):  # silent connections from one source: at most 2 per worker are held
            held.append(socket.create_connection(("127.0.0.1", proc.port)))
        eventually(lambda: proc.metric("enforcer_dns_queries_total", outcome="tcp_source_limit") >= 6, 5, 0.1)
        assert proc.metric("enforcer_dns_queries_total", outcome="tcp_source_limit") >= 6
        assert proc.metric("enforcer_dns_queries_total", outcome="refused") == 6
        assert proc.metric("enforcer_dns_queries_total", outcome="formerr") == 0
    finally:
        for s in held:
            s.close()
        code = proc.stop()
        up.close()
    assert code == 0, proc.stderr_text()
