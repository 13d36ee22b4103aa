"""`enforcer serve` never prints a summary it cannot stand behind (issue 14 item 4).

A second instance started on the ports of a running one exits non-zero with one line naming the address and the
component, prints no summary, creates no token, and leaves the first instance serving. A port held by something else
on UDP only is named as such. ``owns_listener`` (the readiness identity check) tells serve's own child from any other
holder of the port, read from the real /proc. Everything runs in a loopback-only network namespace.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.query
import pytest

from enforcer.serve import owns_listener
from tests.conftest import free_port
from tests.dns.fakeupstream import FakeUpstream
from tests.e2e.test_serve import Serve
from tests.netns import loopback_only_netns

pytestmark = pytest.mark.e2e


def _argv(upstream: str, ports: dict[str, int]) -> list[str]:
    return [
        sys.executable, "-m", "enforcer", "serve",
        "--upstream", upstream,
        "--dns-listen", f"127.0.0.1:{ports['dns']}",
        "--dns-metrics", f"127.0.0.1:{ports['dns_metrics']}",
        "--proxy-listen", f"127.0.0.1:{ports['proxy']}",
        "--proxy-metrics", f"127.0.0.1:{ports['proxy_metrics']}",
        "--analyst-listen", f"127.0.0.1:{ports['analyst']}",
    ]  # fmt: skip


def _stop(serve: Serve) -> int | None:
    serve.proc.send_signal(signal.SIGTERM)
    try:
        return serve.proc.wait(30)
    except subprocess.TimeoutExpired:
        serve.proc.kill()
        serve.proc.wait(10)
        return None


def test_second_instance_names_the_busy_address_and_the_first_keeps_serving(tmp_path: Path) -> None:
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    with loopback_only_netns():
        upstream = FakeUpstream(ttl=60)
        ports = {k: free_port() for k in ("dns", "dns_metrics", "proxy", "proxy_metrics", "analyst")}
        first = Serve(_argv(upstream.address, ports), first_dir)
        try:
            first.wait_for("Ctrl-C stops everything", 90)
            assert owns_listener(first.proc.pid, ports["dns"], "udp") is True
            assert owns_listener(first.proc.pid, ports["proxy"], "tcp") is True  # mitmdump, a grandchild

            second = subprocess.run(
                _argv(upstream.address, ports), cwd=second_dir, capture_output=True, text=True, timeout=60
            )
            lines = (second.stdout + second.stderr).strip().splitlines()
            assert second.returncode != 0
            assert lines == [
                f"enforcer serve: cannot listen on 127.0.0.1:{ports['dns']}/udp (dns): Address already in use"
            ], lines
            assert not (second_dir / "var/analyst.token").exists(), "a token was created for a serve that never ran"

            # The first instance still answers, and its children still own their ports.
            r = dns.query.udp(dns.message.make_query("weixin.qq.com", "A"), "127.0.0.1", port=ports["dns"], timeout=10)
            assert [rr.to_text() for rrset in r.answer for rr in rrset] == ["0.0.0.0"]
            assert first.proc.poll() is None
            assert owns_listener(first.proc.pid, ports["analyst"], "tcp") is True
        finally:
            code = _stop(first)
            upstream.close()
    assert code == 0, first.output[-3000:]


def test_a_port_held_elsewhere_is_named_with_its_protocol_and_component(tmp_path: Path) -> None:
    with loopback_only_netns():
        ports = {k: free_port() for k in ("dns", "dns_metrics", "proxy", "proxy_metrics", "analyst")}
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            held.bind(("127.0.0.1", ports["proxy_metrics"]))
            held.listen(1)
            # The identity check: this listener is the test process's, not another process's.
            other = subprocess.Popen(["sleep", "30"])
            try:
                assert owns_listener(other.pid, ports["proxy_metrics"], "tcp") is False
            finally:
                other.kill()
                other.wait(5)
            assert owns_listener(os.getpid(), ports["proxy_metrics"], "tcp") is True
            run = subprocess.run(_argv("127.0.0.1:9", ports), cwd=tmp_path, capture_output=True, text=True, timeout=60)
        out = (run.stdout + run.stderr).strip().splitlines()
        assert run.returncode == 1
        assert out == [
            f"enforcer serve: cannot listen on 127.0.0.1:{ports['proxy_metrics']}/tcp (proxy): Address already in use"
        ], out
        assert not (tmp_path / "var").exists(), "serve created its data directory before refusing to start"


def test_a_standalone_resolver_names_the_busy_address(tmp_path: Path) -> None:
    with loopback_only_netns(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "enforcer", "dns", "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:9"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if "enforcer dns:" in line]
    assert errors == [f"enforcer dns: cannot listen on 127.0.0.1:{port} (udp+tcp): Address already in use"], run.stderr
