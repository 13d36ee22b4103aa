"""Helpers for the resolver tests: start a real ``enforcer dns`` process, query it with dnspython, read its
/metrics (prometheus_client.parser) and its event file.

This folder has no ``__init__.py`` on purpose: a package named ``dns`` would shadow dnspython.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port  # re-exported: the resolver tests import it from here

ROOT = Path(__file__).resolve().parents[2]
BLOCKLISTS = ROOT / "blocklists"


class DnsProcess:
    """``enforcer dns`` as a subprocess on a free port, with metrics and events enabled."""

    def __init__(self, tmp: Path, *args: str, listen_host: str = "127.0.0.1", env: dict[str, str] | None = None):
        self.host = listen_host
        # A port found free can be taken before the resolver binds it (another test's client socket took one in a
        # full run: "cannot listen: Address already in use"): start again on other ports, at most three times.
        for attempt in range(3):
            self.port = free_port(host=listen_host)
            self.metrics_port = free_port()
            self.events = tmp / f"events-{self.port}.jsonl"
            self.stderr_path = tmp / f"stderr-{self.port}.log"
            listen = f"[{listen_host}]:{self.port}" if ":" in listen_host else f"{listen_host}:{self.port}"
            cmd = [sys.executable, "-m", "enforcer", "dns", "--listen", listen,
                   "--metrics", f"127.0.0.1:{self.metrics_port}", "--events", str(self.events), *args]  # fmt: skip
            self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=self._stderr, cwd=ROOT, env={**os.environ, **(env or {})}
            )
            try:
                self.lines = self._read_startup()
                return
            except RuntimeError as exc:
                if "Address already in use" not in str(exc) or attempt == 2:
                    raise

    def _read_startup(self, timeout: float = 20.0) -> list[str]:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.2):
                if self.proc.poll() is not None:
                    break
                continue
            line = self.proc.stdout.readline()
            if b"listening on" in line:
                return [line.decode().strip()]
            if not line:
                break
        self.stop()
        raise RuntimeError(f"enforcer dns did not start: {line!r}; stderr: {self.stderr_text()}")

    def stderr_text(self) -> str:
        if not self._stderr.closed:  # closed by stop(), e.g. after a failed start
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    # -- queries -------------------------------------------------------------------------------------------------
    def query(
        self,
        name: str,
        rdtype: str | int = "A",
        *,
        tcp: bool = False,
        edns: int | bool = 0,
        payload: int = 1232,
        timeout: float = 3.0,
    ) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, use_edns=edns if edns is not False else False, payload=payload)
        if tcp:
            return dns.query.tcp(q, self.host, port=self.port, timeout=timeout)
        return dns.query.udp(q, self.host, port=self.port, timeout=timeout)

    # -- observations --------------------------------------------------------------------------------------------
    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(self.metrics_text()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def read_events(self, wait_for: int = 0, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            events = []
            if self.events.exists():
                for line in self.events.read_text().splitlines():
                    with contextlib.suppress(ValueError):
                        events.append(json.loads(line))
            if len(events) >= wait_for or time.monotonic() > deadline:
                return events
            time.sleep(0.05)

    def events_for(self, qname: str, count: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Events whose dns.question.name is ``qname``, waiting until at least ``count`` arrived (or timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.read_events() if e.get("dns", {}).get("question", {}).get("name") == qname]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
        return self.proc.returncode


def app_file(app: str, effective: str, domains: list[str], exempt: str = "[]") -> str:
    """A blocklist file for one test app: its effective date, exempt clients and blocked domains."""
    rules = "".join(f"  - domain: {d}\n    category: messaging\n" for d in domains)
    head = f"""\
        app: {app}
        name: Test {app}
        vendor: Test
        policy:
          effective: {effective}
          exempt_clients: {exempt}
        block:
        """
    return textwrap.dedent(head) + rules


def ede_texts(msg: dns.message.Message) -> list[tuple[int, str]]:
    return [(o.code, o.text or "") for o in msg.options if isinstance(o, dns.edns.EDEOption)]


def rcode(msg: dns.message.Message) -> str:
    return dns.rcode.to_text(msg.rcode())


def addresses(msg: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in msg.answer for rd in rrset if rrset.rdtype in (1, 28)]


def wire_name(query: str) -> str:
    """How a query name reaches the upstream: lower-case A-labels without the trailing dot."""
    return dns.name.from_text(query).to_text(omit_final_dot=True).lower()
