"""A log line per decision that matters (issue 14 item 5), read from the real processes' stderr.

Real ``enforcer dns`` and ``enforcer proxy`` processes in a loopback-only network namespace, a local fake upstream,
real ``dig`` and dnspython as clients, real /metrics parsed with prometheus_client:

- a policy reload says what it loaded, or what it refused and that the last good policy is kept;
- deleting ``wechat.yaml`` is refused (``--require-app`` defaults to the apps of the first load; counted as a failed
  reload) and WeChat stays blocked; with ``--require-app ''`` it is a WARNING naming the removed app;
- an explicit ``--require-app`` naming an absent app stops the resolver and the proxy at start with one line;
- blocks are logged at INFO (rate-limited), by the resolver and by the proxy;
- a dead upstream gives SERVFAIL with EDE 23 (connection refused) or 22 (timeout), seen by ``dig`` and dnspython,
  and a WARNING line counting the failures.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BLOCKLISTS, eventually, free_port, require_tool
from tests.dns.fakeupstream import FakeUpstream
from tests.netns import loopback_only_netns

pytestmark = pytest.mark.e2e


class Proc:
    """A real enforcer process with its stdout+stderr collected by a thread."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enforcer", *argv],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        def found() -> str | None:
            hit = next((line for line in self.lines if text in line), None)
            if hit is None and self.proc.poll() is not None:
                pytest.fail(f"process exited before logging {text!r}:\n{self.output[-3000:]}")
            return hit

        return eventually(found, timeout, 0.1, lambda: f"never logged {text!r}:\n{self.output[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextmanager
def resolver(tmp: Path, upstream: str, *extra: str) -> Iterator[tuple[Proc, int, int]]:
    port, metrics = free_port(), free_port()
    proc = Proc(
        ["dns", "--listen", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{metrics}", "--upstream", upstream,
         "--blocklist", str(tmp / "blocklists"), "--timeout", "1", *extra],
        tmp,
    )  # fmt: skip
    try:
        proc.wait_for("listening on")
        yield proc, port, metrics
    finally:
        proc.stop()


def _a(port: int, name: str) -> list[str]:
    r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=5)
    return [rr.to_text() for rrset in r.answer for rr in rrset]


def _reload_failures(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "enforcer_policy_reloads_total" and sample.labels.get("result") == "failure":
                return sample.value
    return 0.0


def test_reloads_are_logged_and_a_vanished_app_is_refused(tmp_path: Path) -> None:
    shutil.copytree(BLOCKLISTS, tmp_path / "blocklists")
    wechat = tmp_path / "blocklists/wechat.yaml"
    saved = wechat.read_text()
    with loopback_only_netns():
        upstream = FakeUpstream(ttl=60)
        try:
            with resolver(tmp_path, upstream.address) as (proc, port, metrics):
                loaded = proc.wait_for("policy loaded:")
                apps = sorted(p.stem for p in (tmp_path / "blocklists").glob("*.yaml"))
                assert f"{len(apps)} apps ({', '.join(apps)})" in loaded, loaded
                assert "wechat.yaml" in loaded and " ms" in loaded

                assert _a(port, "weixin.qq.com") == ["0.0.0.0"]
                line = proc.wait_for("blocked: dns weixin.qq.com")
                assert "for 127.0.0.1 (app wechat" in line and "wechat.yaml:" in line

                wechat.unlink()
                proc.proc.send_signal(signal.SIGHUP)
                refused = proc.wait_for("policy reload refused:")
                assert "required app 'wechat' (was in " in refused and "wechat.yaml)" in refused
                assert "keeping the last good policy" in refused
                assert _reload_failures(metrics) >= 1
                assert _a(port, "weixin.qq.com") == ["0.0.0.0"], "a refused policy un-banned WeChat"

                wechat.write_text(saved)
                proc.proc.send_signal(signal.SIGHUP)
                reloaded = proc.wait_for("policy reloaded:")
                assert f"{len(apps)} apps ({', '.join(apps)})" in reloaded, reloaded

            # The check turned off: the removal is applied, and said at WARNING.
            with resolver(tmp_path, upstream.address, "--require-app", "") as (proc, port, _):
                wechat.unlink()
                proc.proc.send_signal(signal.SIGHUP)
                removed = proc.wait_for("policy: app 'wechat' removed")
                assert "WARNING" in removed and "wechat.yaml" in removed
                assert _a(port, "weixin.qq.com") == ["192.0.2.53"]  # forwarded now: the admin asked for it
        finally:
            upstream.close()


def test_a_required_app_missing_at_start_is_one_line(tmp_path: Path) -> None:
    with loopback_only_netns():
        for command in (["dns", "--listen", f"127.0.0.1:{free_port()}", "--upstream", "127.0.0.1:9"], ["proxy"]):
            run = subprocess.run(
                [sys.executable, "-m", "enforcer", *command, "--blocklist", str(BLOCKLISTS),
                 "--require-app", "wechat,signal"],
                cwd=tmp_path, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert run.returncode == 1, run
            assert run.stderr.strip().splitlines() == [
                f"{BLOCKLISTS}: required app 'signal' missing from the policy (--require-app)"
            ], run.stderr
        # serve checks before it starts anything: no child, no token, no data directory.
        run = subprocess.run(
            [sys.executable, "-m", "enforcer", "serve", "--blocklist", str(BLOCKLISTS), "--require-app", "signal"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 1 and run.stdout == ""
        assert run.stderr.strip().splitlines() == [
            f"enforcer serve: {BLOCKLISTS}: required app 'signal' missing from the policy (--require-app)"
        ], run.stderr
        assert not (tmp_path / "var").exists()


def _servfail_ede(port: int) -> tuple[int, list[int], str]:
    q = dns.message.make_query("example.org", "A", use_edns=0)
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=10)
    codes = [opt.code for opt in r.options if isinstance(opt, dns.edns.EDEOption)]
    texts = " ".join(opt.text or "" for opt in r.options if isinstance(opt, dns.edns.EDEOption))
    return r.rcode(), codes, texts


def test_dead_upstream_servfail_carries_ede_and_is_logged(tmp_path: Path) -> None:
    dig = require_tool("dig")
    shutil.copytree(BLOCKLISTS, tmp_path / "blocklists")
    with loopback_only_netns():
        # Connection refused: nothing listens on this UDP port (ICMP port unreachable on loopback) -> EDE 23.
        refused = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
        with resolver(tmp_path, refused) as (proc, port, _):
            rcode, codes, text = _servfail_ede(port)
            assert rcode == dns.rcode.SERVFAIL and codes == [23], (codes, text)
            assert refused in text
            out = subprocess.run(
                [dig, "@127.0.0.1", "-p", str(port), "example.net", "+tries=1", "+time=5"],
                capture_output=True, text=True, timeout=30,
            ).stdout  # fmt: skip
            assert "status: SERVFAIL" in out and "EDE: 23 (Network Error)" in out, out
            line = proc.wait_for(f"upstream {refused}:")
            assert "WARNING" in line and "network error(s) in the last 60 s" in line

        # Timeout: a UDP socket that reads and never answers -> EDE 22.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            mute = f"127.0.0.1:{silent.getsockname()[1]}"
            with resolver(tmp_path, mute) as (proc, port, _):
                rcode, codes, text = _servfail_ede(port)
                assert rcode == dns.rcode.SERVFAIL and codes == [22], (codes, text)
                out = subprocess.run(
                    [dig, "@127.0.0.1", "-p", str(port), "example.net", "+tries=1", "+time=5"],
                    capture_output=True, text=True, timeout=30,
                ).stdout  # fmt: skip
                assert "status: SERVFAIL" in out and "EDE: 22 (No Reachable Authority)" in out, out
                line = proc.wait_for(f"upstream {mute}: 1 timeout(s)")
                assert "WARNING" in line
                # Without EDNS the client gets a plain SERVFAIL (no OPT record to carry an EDE).
                r = dns.query.udp(dns.message.make_query("example.com", "A"), "127.0.0.1", port=port, timeout=10)
                assert r.rcode() == dns.rcode.SERVFAIL and r.edns < 0


def test_proxy_logs_a_block(tmp_path: Path) -> None:
    with loopback_only_netns():
        port = free_port()
        proc = Proc(["proxy", "--listen", f"127.0.0.1:{port}", "--blocklist", str(BLOCKLISTS),
                     "--confdir", str(tmp_path / "ca")], tmp_path)  # fmt: skip
        try:
            proc.wait_for("policy loaded:")
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"}))

            def blocked() -> bool:
                try:
                    opener.open("http://dldir1.qq.com/weixin/Windows/WeChatSetup.exe", timeout=10)
                except urllib.error.HTTPError as exc:
                    return exc.code == 403
                except OSError:
                    return False  # the proxy is not listening yet
                return False

            eventually(blocked, 60, 0.5, "the proxy never answered 403")
            line = proc.wait_for("blocked: proxy http-block http://dldir1.qq.com/weixin/Windows/WeChatSetup.exe")
            assert "for 127.0.0.1 (app wechat, rule wechat:url:dldir1.qq.com/weixin/*" in line
        finally:
            proc.stop()
