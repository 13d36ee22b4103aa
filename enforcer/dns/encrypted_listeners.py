"""The encrypted listeners of one resolver: their settings (``--dot/--doh/--doq`` and friends) and their wiring.

- ``EncryptedSettings`` / ``encrypted_settings(args)``: the flags checked into settings (ValueError, one line,
  naming the flag). Without ``--tls-cert``/``--tls-key`` every encrypted listener must be on loopback (a
  self-signed certificate is made in ``--tls-dir``); beyond loopback without a certificate the resolver refuses
  to start. ``--require-client-id`` needs ``--client-ids`` or ``--inventory`` (else nothing could be answered).
- ``EncryptedListeners(settings, handler, allowed, outcome, registry)``: ``start()`` loads the certificate and the
  known ClientIDs, binds every DoT/DoH (TCP) and DoQ (UDP) address and returns them as ``HOST:PORT (dot)``;
  a background task re-reads the certificate and the ClientID files every ``watch_interval`` seconds (off the
  event loop), each re-read counted in ``enforcer_dns_encrypted_reloads_total{kind,result}`` (a file that fails is
  logged, counted as a failure, and the last good one kept); ``close()`` stops everything. All of them feed the
  one chain (``handler``: chain.build_chain).

The servers are enforcer/dns/encrypted.py (gate, DoT), enforcer/dns/doh.py and enforcer/dns/doq.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from ..config import parse_number
from ..metrics import DNS_ENCRYPTED_RELOADS_TOTAL, Metrics
from ..net import split_host_port
from .chain import Handler
from .clientid import KnownIds, normalize_server_name
from .encrypted import DotServer, EncryptedLimits, Gate, accept_loop
from .tls import CertSource, self_signed

log = logging.getLogger("enforcer.dns")

DEFAULT_TLS_DIR = "var/tls"  # like the proxy's CA (var/mitmproxy): relative to the working directory
RELOAD_KINDS = ("certificate", "client_ids")


@dataclass
class EncryptedSettings:
    dot: list[tuple[str, int]] = field(default_factory=list)
    doh: list[tuple[str, int]] = field(default_factory=list)
    doq: list[tuple[str, int]] = field(default_factory=list)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_dir: str = DEFAULT_TLS_DIR
    server_name: str | None = None
    require_client_id: bool = False
    client_ids: str | None = None
    inventory: str | None = None
    limits: EncryptedLimits = field(default_factory=EncryptedLimits)
    watch_interval: float = 1.0
    reuse_port: bool = False

    @property
    def addresses(self) -> list[tuple[str, str, int]]:
        return [(t, h, p) for t, addrs in (("dot", self.dot), ("doh", self.doh), ("doq", self.doq)) for h, p in addrs]


def _addresses(flag: str, values: list[str] | None) -> list[tuple[str, int]]:
    out = []
    for value in values or []:
        try:
            host, port = split_host_port(value)
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise ValueError(f"{flag} {value!r}: {exc} (expected IP:PORT)") from None
        out.append((host, port))
    return out


def encrypted_settings(args: Any) -> EncryptedSettings | None:
    """The encrypted-listener flags, checked; None when no ``--dot``/``--doh``/``--doq`` is given."""
    s = EncryptedSettings(
        dot=_addresses("--dot", getattr(args, "dot", None)),
        doh=_addresses("--doh", getattr(args, "doh", None)),
        doq=_addresses("--doq", getattr(args, "doq", None)),
    )
    if not s.addresses:
        return None
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together (a PEM certificate chain and its private key)")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path and not Path(path).is_file():
            raise ValueError(f"{flag} {path}: no such file")
    if not cert:
        outside = [f"--{t} {h}:{p}" for t, h, p in s.addresses if not ipaddress.ip_address(h).is_loopback]
        if outside:
            raise ValueError(f"{outside[0]}: beyond loopback an encrypted listener needs --tls-cert and --tls-key")
    s.tls_cert, s.tls_key = cert or None, key or None
    s.tls_dir = getattr(args, "tls_dir", None) or DEFAULT_TLS_DIR
    name = getattr(args, "server_name", None)
    if name:
        try:
            s.server_name = normalize_server_name(name)
        except ValueError as exc:
            raise ValueError(f"--server-name {exc}") from None
    s.client_ids = getattr(args, "client_ids", None) or None
    s.inventory = getattr(args, "inventory", None) or None
    s.require_client_id = bool(getattr(args, "require_client_id", False))
    if s.require_client_id and not (s.client_ids or s.inventory):
        raise ValueError("--require-client-id: give the known ids with --client-ids FILE or --inventory FILE")
    if s.require_client_id and not s.server_name and not s.doh:
        raise ValueError("--require-client-id: DoT/DoQ clients name their id as <id>.NAME: give --server-name NAME")
    s.limits = EncryptedLimits(
        max_connections=parse_number("--tls-max-connections", getattr(args, "tls_max_connections", 10_000), int, 1,
                                1_000_000),
        max_per_source=parse_number("--tls-max-per-source", getattr(args, "tls_max_per_source", 32), int, 1, 1_000_000),
        handshake_timeout=parse_number("--tls-handshake-timeout", getattr(args, "tls_handshake_timeout", 5.0), float,
                                  0.1, 120),
        idle_timeout=parse_number("--tls-idle-timeout", getattr(args, "tls_idle_timeout", 30.0), float, 0.1, 86_400),
        h2_max_streams=parse_number("--doh-max-streams", getattr(args, "doh_max_streams", 100), int, 1, 10_000),
    )  # fmt: skip
    return s


def _bind_tcp(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(4096)
        sock.setblocking(False)
    except Exception:
        sock.close()
        raise
    return sock


def _display(host: str, port: int, transport: str) -> str:
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}") + f" ({transport})"


class EncryptedListeners:
    def __init__(
        self,
        settings: EncryptedSettings,
        handler: Handler,
        allowed: Callable[[str], bool],
        outcome: Callable[[str], None],
        registry: CollectorRegistry | None,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.allowed = allowed
        self.outcome = outcome
        self.registry = registry
        self.certs: CertSource | None = None
        self.known: KnownIds | None = None
        self.gate: Gate | None = None
        self.servers: list[Any] = []  # DotServer / DohServer / DoqServer
        self.accepting: list[tuple[asyncio.Task[None], socket.socket]] = []
        self.self_signed: str | None = None  # the certificate's path when one was generated
        self._watch: asyncio.Task[None] | None = None
        self.reloads: Any = None  # the enforcer_dns_encrypted_reloads_total counter, when there is a registry
        if registry is not None:
            self.reloads = Metrics(registry, (DNS_ENCRYPTED_RELOADS_TOTAL,))[DNS_ENCRYPTED_RELOADS_TOTAL]
            for kind in RELOAD_KINDS:  # present from the first scrape, so an alert on increase() works from zero
                for result in ("success", "failure"):
                    self.reloads.labels(kind, result)

    async def start(self) -> list[str]:
        s = self.settings
        loop = asyncio.get_running_loop()
        cert, key = s.tls_cert or "", s.tls_key or ""
        if not cert or not key:
            names = [s.server_name, f"*.{s.server_name}"] if s.server_name else []
            cert, key = await loop.run_in_executor(None, self_signed, s.tls_dir, names)
            self.self_signed = cert
            log.warning("encrypted DNS: no --tls-cert, using the self-signed certificate %s (loopback only)", cert)
        self.certs = certs = await loop.run_in_executor(None, CertSource, cert, key)
        if s.client_ids or s.inventory:
            self.known = await loop.run_in_executor(None, KnownIds, s.client_ids, s.inventory)
        self.gate = gate = Gate(
            self.allowed, s.limits, server_name=s.server_name, known=self.known,
            require_client_id=s.require_client_id, registry=self.registry,
        )  # fmt: skip
        shown = []
        try:
            for transport, host, port in s.addresses:
                if transport == "doq":
                    from .doq import DoqServer

                    doq = DoqServer(self.handler, gate, certs, self.outcome)
                    self.servers.append(doq)
                    port = await doq.start(host, port)
                else:
                    server: Any
                    if transport == "dot":
                        server = DotServer(self.handler, gate, certs, self.outcome)
                    else:
                        from .doh import DohServer

                        server = DohServer(self.handler, gate, certs, self.outcome)
                    self.servers.append(server)
                    certs.context(server.alpn)  # made now from the good pair, whatever is on disk later
                    sock = _bind_tcp(host, port, s.reuse_port)
                    port = sock.getsockname()[1]
                    self.accepting.append((asyncio.ensure_future(accept_loop(sock, server.serve)), sock))
                shown.append(_display(host, port, transport))
        except BaseException:
            await self.close()
            raise
        self._watch = asyncio.ensure_future(self._watch_files())
        return shown

    async def _watch_files(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.watch_interval)
            try:
                for kind, source in (("certificate", self.certs), ("client_ids", self.known)):
                    if source is None:
                        continue
                    failures = source.failures
                    reloaded = await loop.run_in_executor(None, source.reload_if_changed)
                    if self.reloads is not None and (reloaded or source.failures != failures):
                        self.reloads.labels(kind, "success" if reloaded else "failure").inc()
            except Exception:  # never let the watcher die: the next round tries again
                log.exception("encrypted DNS: reloading the certificate or the ClientIDs failed")

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(BaseException):
                await self._watch
        for task, _sock in self.accepting:
            task.cancel()
        for task, sock in self.accepting:
            with contextlib.suppress(BaseException):
                await task
            sock.close()
        for server in self.servers:
            server.close() if hasattr(server, "configuration") else server.close_all()
        self.accepting.clear()
        self.servers.clear()
