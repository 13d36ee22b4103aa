"""mitmproxy addon enforcing the policy at every layer mitmproxy exposes; also loads alone: ``mitmdump -s addon.py``.

Hooks, in the order a connection meets them:
- ``http_connect``: CONNECT to a blocked host or a literal IP in a blocked CIDR -> 403 block page before any TLS.
- ``tls_clienthello``: blocked SNI (or blocked CONNECT host / destination address) -> the connection is never
  decrypted and marked refused (the ``server_connect`` gate kills the upstream side, so the client's TLS goes
  nowhere). Passed through undecrypted (``enforcer_passthrough``) only when neither the SNI nor the CONNECT host
  has url/store rules and the client named its server (TLS to a bare IP without SNI is decrypted: the Host header
  inside is the only name it will show).
- ``server_connect``: the catch-all gate in every mode (regular, upstream, transparent, WireGuard, reverse): a
  connection refused earlier, or whose address (any IP literal spelling) or SNI is blocked, gets ``server.error``
  and is never opened. A name is resolved here first and every address it resolves to is judged by the ``cidr``
  rules; the connection is then pinned to the first address judged (what asyncio would have dialled first), so a
  second lookup cannot swap in another address (DNS rebinding). ``server_connected`` puts the name back on the open
  connection (mitmproxy reuses connections and picks the upstream SNI by it) and checks the peer address once more.
- ``requestheaders``: plain HTTP and intercepted HTTPS, HTTP/1 and HTTP/2, websocket upgrades: URL, store and name
  rules on every host the request names (destination, :authority, Host, the tunnel's CONNECT host and SNI) -> 403
  block page; a Host that can be read two ways (two Host fields, ``host:80:80``, userinfo) -> 400.
- ``dns_request``: mitmproxy's DNS/WireGuard modes sinkhole the same names as ``enforcer dns`` (A 0.0.0.0, AAAA ::),
  replacing the answer mitmproxy's resolver (which runs before scripts) already put there.

No dataclasses are defined here: mitmproxy loads a script without registering it in ``sys.modules``, which
dataclasses need; the small records live in ``decide``.

mitmproxy hooks fail open (an exception is logged and the flow proceeds), so every hook catches its own errors and
refuses the flow instead, counting ``enforcer_proxy_flows_total{outcome="error"}``. Flows another addon already
answered are left alone; decided flows carry ``flow.metadata["enforcer"]``.

``enforcer_proxy_flows_total{outcome}`` counts decisions: every CONNECT, HTTP request and DNS question, plus each TLS
handshake or server connection that matched a rule (allowed, blocked, monitored, invalid = unparsable host, error).
Enforced hits count in ``enforcer_blocked_total``, monitor hits in ``enforcer_monitored_total``, each with one event.

Options (``load``/``configure``): ``enforcer_blocklist`` (files/folders, comma-separated), ``enforcer_events``
(JSON Lines path), ``enforcer_metrics`` (HOST:PORT, own private registry), ``enforcer_passthrough``. The policy is
watched by ``PolicyHolder.watch`` as a task started in ``running`` and cancelled in ``done`` (the reload parses in a
worker thread; a broken edit keeps the last good policy). ``done`` also stops the metrics server and closes the
event writer, so mitmproxy's script live-reload can build a fresh addon on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mitmproxy import ctx, dns, exceptions, http, tls
from mitmproxy.addonmanager import Loader
from mitmproxy.connection import Client
from mitmproxy.net.dns import response_codes, types
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from enforcer.config import default_blocklist
from enforcer.events import EventWriter, HitEvent, install_reopen_signal
from enforcer.metrics import (
    BLOCKED_TOTAL,
    EVENTS_DROPPED_TOTAL,
    EVENTS_QUEUED,
    EVENTS_WRITTEN_TOTAL,
    MONITORED_TOTAL,
    POLICY_INFO,
    POLICY_LAST_RELOAD,
    POLICY_RELOADS_TOTAL,
    POLICY_RULES,
    PROXY_FLOWS_TOTAL,
    SPECS,
    LocalCounter,
    Metrics,
    serve_metrics,
    split_host_port,
)
from enforcer.policy import Match, Policy, PolicyError
from enforcer.policy.addresses import parse_ip_literal
from enforcer.policy.reloader import PolicyHolder
from enforcer.proxy import blockpage
from enforcer.proxy.decide import (
    ALLOWED,
    BLOCKED,
    ERROR,
    INVALID,
    MONITORED,
    BadHost,
    ConnState,
    UnparsableRequest,
    Verdict,
    client_address,
    judge,
    match_request,
    request_hosts,
)

log = logging.getLogger("enforcer.proxy")

COMPONENT = "proxy"
SINKHOLE_TTL = 60
_ERROR_LOG_INTERVAL = 10.0  # seconds between full tracebacks of hook errors (a broken policy would flood the log)
RESOLVE_TIMEOUT = 10.0  # seconds for the gate's own lookup of a server name (mitmproxy's own connect has no bound)
_MAX_PINNED = 4096  # server connections between server_connect and server_connected (a bound, not a working size)


class _EventsCollector(Collector):
    """The event writer's counters, read at scrape time from whichever writer is current."""

    def __init__(self, addon: EnforcerAddon) -> None:
        self.addon = addon

    def collect(self) -> Iterator[Metric]:
        w = self.addon.writer
        for name, value in ((EVENTS_WRITTEN_TOTAL, w.written), (EVENTS_DROPPED_TOTAL, w.dropped)):
            family = CounterMetricFamily(name[: -len("_total")], SPECS[name].help)
            family.add_metric([], value)
            yield family
        queued = GaugeMetricFamily(EVENTS_QUEUED, SPECS[EVENTS_QUEUED].help)
        queued.add_metric([], w.queued)
        yield queued


class EnforcerAddon:
    def __init__(self) -> None:
        # Import-time construction must stay cheap and side-effect free: mitmproxy re-imports the script on every
        # edit; files, threads and sockets are opened in configure()/running() and released in done().
        self.holder: PolicyHolder | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.flows = LocalCounter(PROXY_FLOWS_TOTAL, self.registry)
        self.blocked = LocalCounter(BLOCKED_TOTAL, self.registry)
        self.monitored = LocalCounter(MONITORED_TOTAL, self.registry)
        self.metrics = Metrics(
            self.registry, names=(POLICY_RULES, POLICY_RELOADS_TOTAL, POLICY_INFO, POLICY_LAST_RELOAD)
        )
        self.writer = EventWriter(None)
        self.registry.register(_EventsCollector(self))
        self.passthrough = True
        self._metrics_server: Any = None
        self._metrics_listen: str = ""
        self._watch_task: asyncio.Task[None] | None = None
        self._sighup_loop: asyncio.AbstractEventLoop | None = None
        self._conns: dict[str, ConnState] = {}
        self._pinned: dict[str, tuple[str, int]] = {}  # server connection id -> the address as mitmproxy had it
        self._last_error_log = 0.0
        self._suppressed_errors = 0

    # -- options -------------------------------------------------------------------------------------------------
    def load(self, loader: Loader) -> None:
        loader.add_option(
            "enforcer_blocklist",
            str,
            default_blocklist(),
            "enforcer: blocklist files or folders (comma-separated); reloaded when they change.",
        )
        loader.add_option("enforcer_events", str, "", "enforcer: write hit events (ECS JSON Lines) to this file.")
        loader.add_option("enforcer_metrics", str, "", "enforcer: serve Prometheus /metrics on HOST:PORT.")
        loader.add_option(
            "enforcer_passthrough",
            bool,
            True,
            "enforcer: pass TLS through undecrypted unless the policy has url/store rules for its server name.",
        )

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "enforcer_blocklist" in updated:
            self._configure_blocklist(opts.enforcer_blocklist)
        if "enforcer_events" in updated:
            self._configure_events(opts.enforcer_events)
        if "enforcer_metrics" in updated:
            self._configure_metrics(opts.enforcer_metrics)
        if "enforcer_passthrough" in updated:
            self.passthrough = bool(opts.enforcer_passthrough)
        if "connection_strategy" in updated and getattr(opts, "connection_strategy", "lazy") == "eager":
            log.warning(
                "enforcer: connection_strategy=eager: mitmproxy connects upstream (and may finish a TLS handshake "
                "with a blocked server) BEFORE this addon decides. Run with --set connection_strategy=lazy "
                "(`enforcer proxy` does) so blocked flows never reach the network."
            )

    def _configure_blocklist(self, value: str) -> None:
        # Several paths are comma-separated; a single existing path is taken whole, so a comma in a name works.
        whole = value.strip()
        paths = [whole] if whole and Path(whole).exists() else [p.strip() for p in value.split(",") if p.strip()]
        if not paths:
            raise exceptions.OptionsError("enforcer_blocklist: no blocklist path given")
        for p in paths:
            if not Path(p).exists():
                raise exceptions.OptionsError(f"enforcer_blocklist: {p}: no such file or directory")
        try:
            holder = PolicyHolder(paths, metrics=self.metrics)
        except PolicyError as exc:
            raise exceptions.OptionsError(f"enforcer_blocklist: invalid policy:\n{exc}") from None
        except OSError as exc:
            raise exceptions.OptionsError(f"enforcer_blocklist: {exc}") from None
        self.holder = holder
        log.info("enforcer: policy %s loaded from %s: %s", holder.policy.fingerprint[:12], value, holder.policy)
        if self._watch_task is not None:  # running already: watch the new files instead
            self._stop_watch()
            self._start_watch()

    def _configure_events(self, value: str) -> None:
        old = self.writer
        if value:
            path = Path(value)
            if path.is_dir():
                raise exceptions.OptionsError(f"enforcer_events: {value}: is a directory, expected a file path")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "ab"):
                    pass
            except OSError as exc:
                raise exceptions.OptionsError(f"enforcer_events: {value}: cannot write: {exc.strerror}") from None
            self.writer = EventWriter(path)
        else:
            self.writer = EventWriter(None)
        # close() joins the writer thread (it flushes what is queued): keep that off the event loop.
        threading.Thread(target=old.close, name="enforcer-events-close", daemon=True).start()

    def _configure_metrics(self, value: str) -> None:
        if value == self._metrics_listen and self._metrics_server is not None:
            return
        if value:
            try:
                split_host_port(value)
            except ValueError as exc:
                raise exceptions.OptionsError(f"enforcer_metrics: {exc}") from None
        self._stop_metrics()
        if value:
            try:
                self._metrics_server, _ = serve_metrics(value, self.registry)
            except OSError as exc:
                raise exceptions.OptionsError(f"enforcer_metrics: cannot listen on {value}: {exc.strerror}") from None
            log.info("enforcer: metrics on http://%s/metrics", value)
        self._metrics_listen = value

    def _stop_metrics(self) -> None:
        server, self._metrics_server = self._metrics_server, None
        self._metrics_listen = ""
        if server is not None:
            server.shutdown()
            server.server_close()

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def running(self) -> None:
        self._start_watch()

    def _start_watch(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.holder is None:
            return
        self._watch_task = loop.create_task(self.holder.watch(), name="enforcer-policy-watch")
        if self.holder.install_sighup(loop):
            self._sighup_loop = loop
        install_reopen_signal(loop)  # SIGUSR1: the event writer reopens its file (logrotate)

    def _stop_watch(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
        loop, self._sighup_loop = self._sighup_loop, None
        if loop is not None:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal.SIGHUP)

    def done(self) -> None:
        self._stop_watch()
        self._stop_metrics()
        self.writer.close()
        self._conns.clear()

    def client_disconnected(self, client: Client) -> None:
        self._conns.pop(client.id, None)

    # -- hooks ---------------------------------------------------------------------------------------------------
    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        try:
            req = flow.request
            match = self._policy().match_host(req.host)
            if match is None:
                self.flows.inc((ALLOWED,))
                return
            verdict = self._judge(match, flow.client_conn)
            target = f"{req.host}:{req.port}"
            self._record(
                verdict,
                "connect-block",
                flow.client_conn,
                url_domain=req.host,
                destination_ip=_ip_or_none(req.host),
                destination_port=req.port,
            )
            flow.metadata["enforcer"] = _mark(verdict, "connect-block")
            if verdict.blocked:
                assert verdict.match is not None
                flow.response = _block_response(verdict.match, target)
        except Exception:
            self._hook_error("http_connect")
            flow.metadata["enforcer"] = {"outcome": ERROR}
            flow.response = _error_response(f"{flow.request.host}:{flow.request.port}")

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        client = data.context.client
        try:
            policy = self._policy()
            sni = data.client_hello.sni
            address = data.context.server.address
            dest = address[0] if address else None
            host = sni or dest
            match = policy.match_host(host) if host else None
            if (match is None or not match.blocked) and sni and dest and dest != sni:
                # Regular mode: the CONNECT host; transparent/WireGuard: the real destination address. Either may be
                # blocked behind an innocent SNI.
                match = policy.match_host(dest) or match
            if match is not None:
                verdict = self._judge(match, client)
                self._record(
                    verdict,
                    "tls-block",
                    client,
                    tls_server_name=sni,
                    url_domain=host,
                    destination_ip=_ip_or_none(dest),
                    destination_port=address[1] if address else None,
                )
                if verdict.blocked:
                    assert verdict.match is not None
                    self._refuse(data, f"blocked by enforcer rule {verdict.match.rule.id}")
                    return
            if self.passthrough and not data.ignore_connection and not _needs_decryption(policy, sni, dest):
                data.ignore_connection = True
        except Exception:
            self._hook_error("tls_clienthello")
            self._refuse(data, "enforcer: policy check failed")

    async def server_connect(self, data: ServerConnectionHookData) -> None:
        server = data.server
        if server.error:
            return
        try:
            state = self._conns.get(data.client.id)
            if state is not None and state.refused:
                server.error = state.refused
                return
            policy = self._policy()
            address = server.address
            checks: list[tuple[str, str]] = []
            if address:
                checks.append((str(address[0]), "connect-block"))
            if server.sni and (not address or server.sni != address[0]):
                checks.append((server.sni, "tls-block"))
            for host, action in checks:
                if state is not None and host in state.url_allowed:
                    continue
                if self._gate(policy, host, action, data, address):
                    return
            if address and parse_ip_literal(str(address[0])) is None:
                await self._resolve_and_pin(policy, data)
        except Exception:
            self._hook_error("server_connect")
            server.error = "enforcer: policy check failed"

    def _gate(
        self,
        policy: Policy,
        host: str,
        action: str,
        data: ServerConnectionHookData,
        address: tuple[str, int] | None,
        ip: str | None = None,
    ) -> bool:
        """Judge one host of a server connection; True (and ``server.error`` set) when it must not be opened."""
        match = policy.match_host(host)
        if match is None or not match.blocked:
            return False
        verdict = self._judge(match, data.client)
        if ip is not None:  # a resolved address is logged with the name that led to it
            domain = str(address[0]) if address else None
        else:
            domain = host if action == "connect-block" else None
        self._record(
            verdict,
            action,
            data.client,
            url_domain=domain,
            tls_server_name=data.server.sni if action == "tls-block" else None,
            destination_ip=ip or (_ip_or_none(str(address[0])) if address else None),
            destination_port=address[1] if address else None,
        )
        if verdict.blocked:
            data.server.error = f"blocked by enforcer rule {match.rule.id}"
            return True
        return False

    async def _resolve_and_pin(self, policy: Policy, data: ServerConnectionHookData) -> None:
        """Resolve the server name, judge every address, and connect to the first one only (see module docstring)."""
        server = data.server
        assert server.address is not None
        name, port = str(server.address[0]), int(server.address[1])
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(name, port, type=socket.SOCK_STREAM), timeout=RESOLVE_TIMEOUT
            )
        except TimeoutError:  # before OSError, of which it is a subclass
            server.error = f"cannot resolve {name}: no answer within {RESOLVE_TIMEOUT:g}s"
            return
        except (OSError, UnicodeError) as exc:
            # mitmproxy's own lookup would fail the same way; a second lookup must not get a different chance.
            server.error = f"cannot resolve {name}: {exc}"
            return
        addresses: list[str] = []  # as getaddrinfo gave them (a link-local address keeps its %zone for dialling)
        for info in infos:
            if str(info[4][0]) not in addresses:
                addresses.append(str(info[4][0]))
        for dial in addresses:
            ip = dial.split("%", 1)[0]
            if self._gate(policy, ip, "connect-block", data, server.address, ip=ip):
                return
        if not addresses:
            server.error = f"cannot resolve {name}: no address"
            return
        if len(self._pinned) >= _MAX_PINNED:
            self._pinned.pop(next(iter(self._pinned)))
        self._pinned[server.id] = (name, port)
        server.address = (addresses[0], port)

    def server_connected(self, data: ServerConnectionHookData) -> None:
        original = self._pinned.pop(data.server.id, None)
        if original is not None:
            # The pin only chose the address to dial. Give the open connection its name back: mitmproxy matches later
            # requests to open connections, and picks the upstream SNI, by name. Server refuses a new address once
            # open; this is the same destination under its own name, so that check is stepped around on purpose.
            object.__setattr__(data.server, "address", original)

    def server_connect_error(self, data: ServerConnectionHookData) -> None:
        self._pinned.pop(data.server.id, None)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        req = flow.request
        try:
            hosts = request_hosts(req.host, req.headers.get_all("host"), req.authority, _connection_hosts(flow))
            match, url = match_request(self._policy(), req.scheme, hosts, req.port, req.path, req.method)
            if match is None:
                self.flows.inc((ALLOWED,))
                return
            verdict = self._judge(match, flow.client_conn)
            if not match.blocked and match.rule.kind in ("url", "store"):
                self._state(flow.client_conn).url_allowed.update(hosts)
            self._record(
                verdict,
                "http-block",
                flow.client_conn,
                url_full=url,
                url_domain=req.host_header or req.host,
                http_method=req.method,
                destination_ip=_ip_or_none(req.host),
                destination_port=req.port,
            )
            flow.metadata["enforcer"] = _mark(verdict, "http-block")
            if verdict.blocked:
                assert verdict.match is not None
                req.stream = False  # a response and a streamed request body cannot go together
                flow.response = _block_response(verdict.match, url)
        except BadHost as exc:
            self.flows.inc((INVALID,))
            flow.metadata["enforcer"] = {"outcome": INVALID, "reason": str(exc)}
            req.stream = False
            flow.response = _bad_request(str(exc))
        except UnparsableRequest:
            self.flows.inc((INVALID,))
            flow.metadata["enforcer"] = {"outcome": INVALID}
            req.stream = False
            flow.response = _error_response(req.host_header or req.host)
        except Exception:
            self._hook_error("requestheaders")
            flow.metadata["enforcer"] = {"outcome": ERROR}
            req.stream = False
            flow.response = _error_response(req.host_header or req.host)

    def dns_request(self, flow: dns.DNSFlow) -> None:
        # Unlike the HTTP hooks, an existing answer is NOT a reason to skip: mitmproxy's own DnsResolver runs before
        # script addons and has already resolved the name by now (its lookup cannot be prevented from here), so a
        # blocked name always gets the sinkhole answer, replacing whatever was there.
        try:
            question = flow.request.question
            if question is None:
                return
            match = self._policy().match_name(question.name)
            if match is None:
                self.flows.inc((ALLOWED,))
                return
            verdict = self._judge(match, flow.client_conn)
            self._record(
                verdict,
                "dns-block",
                flow.client_conn,
                dns_question_name=question.name,
                dns_question_type=types.to_str(question.type),
            )
            flow.metadata["enforcer"] = _mark(verdict, "dns-block")
            if verdict.blocked:
                flow.error = None
                flow.response = _sinkhole(flow.request)
        except Exception:
            self._hook_error("dns_request")
            flow.metadata["enforcer"] = {"outcome": ERROR}
            flow.error = None
            flow.response = flow.request.fail(response_codes.REFUSED)

    # -- helpers -------------------------------------------------------------------------------------------------
    def _policy(self) -> Policy:
        holder = self.holder
        if holder is None:
            raise RuntimeError("enforcer: no policy loaded (enforcer_blocklist not configured)")
        return holder.policy

    def _state(self, client: Client) -> ConnState:
        state = self._conns.get(client.id)
        if state is None:
            state = self._conns[client.id] = ConnState()
        return state

    def _judge(self, match: Match, client: Client) -> Verdict:
        ip, _ = client_address(client.peername)
        return judge(match, datetime.now(UTC), ip)

    def _refuse(self, data: tls.ClientHelloData, why: str) -> None:
        # Never decrypt it, and make sure nothing upstream is ever opened for it: the server_connect gate reads the
        # connection state (that also covers upstream mode, where the opened server is the upstream proxy), and
        # server.error makes mitmproxy itself drop the attempt.
        self._state(data.context.client).refused = why
        data.ignore_connection = True
        data.context.server.error = why

    def _record(self, verdict: Verdict, action: str, client: Client, **fields: Any) -> None:
        """Count the decision and, for block matches (enforced or monitored), emit one hit event."""
        match = verdict.match
        self.flows.inc((verdict.outcome,))
        if match is None or not match.blocked:
            return
        ip, port = client_address(client.peername)
        if not verdict.enforced:
            # A monitored connection would log the same rule at CONNECT, SNI and server connect: once is enough.
            state = self._state(client)
            key = f"{action}|{match.rule.id}"
            if key in state.logged:
                return
            state.logged.add(key)
        labels = (COMPONENT, match.rule.app, match.rule.category or "", action)
        (self.blocked if verdict.enforced else self.monitored).inc(labels)
        policy = self.holder.policy if self.holder is not None else None
        event = HitEvent.from_match(
            match,
            action=action,
            component=COMPONENT,
            version=policy.fingerprint if policy is not None else "",
            enforced=verdict.enforced,
            exempt=match.app.is_exempt(ip),
            source_ip=str(ip) if ip is not None else None,
            source_port=port,
            **{k: v for k, v in fields.items() if v is not None},
        )
        self.writer.emit(event)

    def _hook_error(self, hook: str) -> None:
        self.flows.inc((ERROR,))
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL:
            self._last_error_log = now
            extra = f" ({self._suppressed_errors} more since the last report)" if self._suppressed_errors else ""
            self._suppressed_errors = 0
            log.exception("enforcer: %s failed; the flow is refused (fail closed)%s", hook, extra)
        else:
            self._suppressed_errors += 1


def _mark(verdict: Verdict, action: str) -> dict[str, Any]:
    match = verdict.match
    if match is None:
        return {"outcome": ALLOWED}
    return {
        "outcome": verdict.outcome,
        "action": action if match.blocked else None,
        "rule": match.rule.id,
        "app": match.rule.app,
        "category": match.rule.category,
        "enforced": verdict.enforced,
    }


def _ip_or_none(host: str | None) -> str | None:
    """The canonical text of an IP literal in any spelling (``1296740613`` -> ``77.74.177.5``); None for a name."""
    addr = parse_ip_literal(host) if host else None
    return str(addr) if addr is not None else None


def _needs_decryption(policy: Policy, sni: str | None, dest: str | None) -> bool:
    """Whether a TLS connection must be decrypted for url/store rules to see its requests.

    Every name the client gave counts, not the SNI alone: ``CONNECT dldir1.qq.com:443`` with SNI ``example.com`` still
    reaches dldir1.qq.com. A client that names nothing (a literal IP, no SNI) is decrypted whenever the policy has
    url/store rules: the Host header inside is then the only name it will show.
    """
    names = [h for h in (sni, dest) if h and parse_ip_literal(h) is None]
    if any(policy.has_url_rules(h) for h in names):
        return True
    return not names and bool(policy.urls)


def _connection_hosts(flow: http.HTTPFlow) -> list[str | None]:
    """Names of the connection a request arrived on that the origin may route by: TLS SNI and the CONNECT host."""
    client = flow.client_conn
    hosts: list[str | None] = [client.sni]
    if client.tls_established and flow.server_conn.address:
        hosts.append(str(flow.server_conn.address[0]))
    return hosts


def _response(rule_id: str, body: bytes) -> http.Response:
    # Built directly rather than with Response.make: make() re-encodes the body and re-derives the headers on every
    # call, which is most of what a blocked flow costs.
    now = time.time()
    fields = [(k.encode(), v.encode()) for k, v in blockpage.headers(rule_id).items()]
    fields.append((b"content-length", str(len(body)).encode()))
    return http.Response(b"HTTP/1.1", blockpage.STATUS, b"Forbidden", http.Headers(fields), body, None, now, now)


def _block_response(match: Match, target: str) -> http.Response:
    return _response(match.rule.id, blockpage.render(match, target))


def _error_response(target: str) -> http.Response:
    return _response(blockpage.ERROR_RULE, blockpage.render_error(target))


def _bad_request(why: str) -> http.Response:
    now = time.time()
    body = blockpage.render_bad_request(why)
    fields = [(k.encode(), v.encode()) for k, v in blockpage.headers(blockpage.BAD_REQUEST_RULE).items()]
    fields += [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    return http.Response(b"HTTP/1.1", 400, b"Bad Request", http.Headers(fields), body, None, now, now)


def _sinkhole(request: dns.Message) -> dns.Message:
    """The resolver's default ``null`` answer: A 0.0.0.0 / AAAA ::, NODATA for every other type."""
    question = request.question
    assert question is not None
    if question.type == types.A:
        return request.succeed([dns.ResourceRecord.A(question.name, ipaddress.IPv4Address(0), ttl=SINKHOLE_TTL)])
    if question.type == types.AAAA:
        return request.succeed([dns.ResourceRecord.AAAA(question.name, ipaddress.IPv6Address(0), ttl=SINKHOLE_TTL)])
    return request.succeed([])


__all__ = ["BLOCKED", "MONITORED", "EnforcerAddon", "addons"]

addons = [EnforcerAddon()]
