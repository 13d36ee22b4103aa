"""`enforcer serve` end to end, with the real Prometheus: the README's main job, checked as its users would.

Everything runs inside a fresh network namespace that has only loopback: if the proxy or the resolver failed open,
a real WeChat or Kaspersky host would still be unreachable. The test thread enters the namespace with setns(2), so
the processes it starts (serve's three children, Prometheus) live there too, and leaves it at the end.

Checked: the start-up summary; a blocked DNS query is sinkholed and an allowed one forwarded to a local fake
upstream; a WeChat download through the proxy gets the block page; the analyst (with its token) lists the device; the
real Prometheus, scraping all three with the shipped alert rules, fires EnforcerNoncompliantDevice; SIGTERM stops
everything with the events on disk.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import pytest
import yaml

from tests.conftest import BLOCKLISTS, ROOT, eventually, free_port, require_tool
from tests.dns.fakeupstream import FakeUpstream
from tests.netns import loopback_only_netns

pytestmark = pytest.mark.e2e


class Serve:
    """`python -m enforcer serve` with its output collected by a thread."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> None:
        def printed() -> bool:
            if any(text in line for line in self.lines):
                return True
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited before printing {text!r}:\n" + "\n".join(self.lines[-60:]))
            return False

        eventually(printed, timeout, 0.1, lambda: f"serve did not print {text!r}:\n" + "\n".join(self.lines[-60:]))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def _http(url: str, token: str | None = None, proxy: str | None = None) -> tuple[int, dict[str, str], bytes]:
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({"http": proxy} if proxy else {})]
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _prometheus_config(tmp: Path, targets: dict[str, str]) -> Path:
    shutil.copy(ROOT / "docker/prometheus/alerts.yml", tmp / "alerts.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _firing(prom: str, alert: str, app: str) -> bool:
    try:
        status, _, body = _http(f"http://{prom}/api/v1/alerts")
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            return False  # still starting: it opens its port after reading its storage
        raise
    if status != 200:
        return False
    alerts = json.loads(body)["data"]["alerts"]
    return any(
        a["labels"].get("alertname") == alert and a["labels"].get("app") == app and a["state"] == "firing"
        for a in alerts
    )


def test_serve_blocks_shows_alerts_and_stops_cleanly(tmp_path: Path) -> None:
    prometheus = require_tool("prometheus")
    shutil.copytree(BLOCKLISTS, tmp_path / "blocklists")
    with loopback_only_netns(), contextlib.ExitStack() as stack:
        upstream = FakeUpstream(ttl=60)
        ports = {k: free_port() for k in ("dns", "dns_metrics", "proxy", "proxy_metrics", "analyst", "prometheus")}
        argv = [
            sys.executable, "-m", "enforcer", "serve",
            "--upstream", upstream.address,
            "--dns-listen", f"127.0.0.1:{ports['dns']}",
            "--dns-metrics", f"127.0.0.1:{ports['dns_metrics']}",
            "--proxy-listen", f"127.0.0.1:{ports['proxy']}",
            "--proxy-metrics", f"127.0.0.1:{ports['proxy_metrics']}",
            "--analyst-listen", f"127.0.0.1:{ports['analyst']}",
        ]  # fmt: skip
        serve = Serve(argv, tmp_path)
        prom_proc = None
        try:
            serve.wait_for("Ctrl-C stops everything", 90)
            out = serve.output
            assert f"127.0.0.1:{ports['dns']}" in out and f"127.0.0.1:{ports['proxy']}" in out
            assert "mitmproxy-ca-cert.pem" in out and f"http://127.0.0.1:{ports['analyst']}/" in out
            token = (tmp_path / "var/analyst.token").read_text().strip()
            assert f"token: {token}" in out
            assert (tmp_path / "var/mitmproxy/mitmproxy-ca-cert.pem").exists()

            prom_dir = tmp_path / "prometheus"
            prom_dir.mkdir()
            prom_log = prom_dir / "prometheus.log"
            prom_err = stack.enter_context(prom_log.open("wb"))
            conf = _prometheus_config(prom_dir, {
                "enforcer-dns": f"127.0.0.1:{ports['dns_metrics']}",
                "enforcer-proxy": f"127.0.0.1:{ports['proxy_metrics']}",
                "enforcer-analyst": f"127.0.0.1:{ports['analyst']}",
            })  # fmt: skip
            prom_proc = subprocess.Popen(
                [prometheus, f"--config.file={conf}", f"--storage.tsdb.path={prom_dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
                stdout=subprocess.DEVNULL, stderr=prom_err,
            )  # fmt: skip

            # DNS: blocked name sinkholed, never forwarded; an allowed name forwarded.
            q = dns.message.make_query("weixin.qq.com", "A")
            r = dns.query.udp(q, "127.0.0.1", port=ports["dns"], timeout=5)
            assert [rr.to_text() for rrset in r.answer for rr in rrset] == ["0.0.0.0"]
            r = dns.query.udp(dns.message.make_query("example.org", "A"), "127.0.0.1", port=ports["dns"], timeout=5)
            assert [rr.to_text() for rrset in r.answer for rr in rrset] == ["192.0.2.53"]
            assert "weixin.qq.com" not in upstream.names() and "example.org" in upstream.names()

            # Proxy: the WeChat installer path on a shared Tencent host gets the block page.
            status, headers, body = _http(
                "http://dldir1.qq.com/weixin/Windows/WeChatSetup.exe", proxy=f"http://127.0.0.1:{ports['proxy']}"
            )
            assert status == 403 and headers.get("X-Enforcer-Rule") == "wechat:url:dldir1.qq.com/weixin/*"
            assert b"WeChat" in body

            # Analyst: token required; the client shows up as non-compliant for WeChat.
            analyst = f"http://127.0.0.1:{ports['analyst']}"
            assert _http(f"{analyst}/api/report")[0] == 401
            rows: list[dict] = []

            def reported() -> bool:
                nonlocal rows
                status, _, body = _http(f"{analyst}/api/report", token)
                assert status == 200
                rows = [c for c in json.loads(body)["clients"] if c["app"] == "wechat"]
                # Two enforced hits (the DNS query and the download); seconds apart they are one attempt (a burst:
                # enforcer/analyst/identity.py).
                return bool(rows) and rows[0]["enforced_hits"] >= 2

            eventually(reported, timeout=30, interval=0.5, message=lambda: f"report rows: {rows}")
            assert rows and rows[0]["client"] == "127.0.0.1" and rows[0]["enforced_hits"] >= 2, rows
            assert rows[0]["enforced_attempts"] >= 1, rows

            # Prometheus: the shipped alert rule fires for WeChat.
            eventually(
                lambda: _firing(f"127.0.0.1:{ports['prometheus']}", "EnforcerNoncompliantDevice", "wechat"),
                timeout=60,
                interval=1,
                message=lambda: (
                    "EnforcerNoncompliantDevice never fired for wechat; prometheus "
                    + (f"exited with {prom_proc.returncode}" if prom_proc.poll() is not None else "running")
                    + ", its log:\n"
                    + prom_log.read_text(errors="replace")[-3000:]
                ),
            )
            assert _firing(f"127.0.0.1:{ports['prometheus']}", "EnforcerNoncompliantDevice", "wechat")
            assert not _firing(f"127.0.0.1:{ports['prometheus']}", "EnforcerNoncompliantDevice", "kaspersky")
        finally:
            if prom_proc is not None:
                prom_proc.terminate()
                prom_proc.wait(15)
            serve.proc.send_signal(signal.SIGTERM)
            try:
                code = serve.proc.wait(30)
            except subprocess.TimeoutExpired:
                serve.proc.kill()
                code = None
            upstream.close()
    assert code == 0, serve.output[-3000:]
    assert "serve: stopping" in serve.output
    events = [json.loads(line) for line in (tmp_path / "var/events/dns.jsonl").read_text().splitlines()]
    assert any(e["dns"]["question"]["name"] == "weixin.qq.com" for e in events)
    proxy_events = [json.loads(line) for line in (tmp_path / "var/events/proxy.jsonl").read_text().splitlines()]
    assert any(e["event"]["action"] == "http-block" for e in proxy_events)
    leftovers = subprocess.run(["pgrep", "-f", f"127.0.0.1:{ports['dns']}"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "a child of serve outlived it"
