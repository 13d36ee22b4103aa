"""What the proxy's addons share, and the one path from a decision to its count, event, flow mark and answer.

- ``Runtime``: the policy holder, the private metrics registry (flow/blocked/monitored counters, policy gauges, the
  event writer's own collector), the event writer, the ``passthrough`` option and per-connection ``ConnState``.
- ``Runtime.judge``: a match for a client, now -> ``Verdict`` (asks ``Policy.enforcement`` through ``decide.judge``).
- ``Runtime.requests``: the ``decide.RequestMemo`` of request decisions (the request judge's URL matching).
- ``Runtime.record``: counts the decision and, for a block match (enforced or monitored), emits one hit event; a
  monitored match is logged once per connection, action and rule.
- ``Runtime.answer``: record -> ``flow.metadata["enforcer"]`` -> 403 block page when enforced (CONNECT and requests),
  in the language of the request's ``Accept-Language``.
- ``Runtime.hold_page`` / ``Runtime.settle_page``: a blocked CONNECT in ``page`` mode (``blocked_connect``) is
  counted as a decision at once, marked refused (nothing upstream is ever opened for it) and accepted; its hit
  (``enforcer_blocked_total`` and one event) is recorded once, by ``settle_page``, at the first of: the first request
  inside the tunnel (the page is shown; ``tls.established`` true over TLS), a failed TLS handshake
  (``tls.established`` false, ``outcome="handshake_failed"``), or the client leaving. A tunnel that carried no
  request is not recorded while another block-page tunnel of the same client and rule is open: browsers open a
  spare connection beside the one they use (Chromium: two tunnels per page view, one never used); that is one
  attempt. A tunnel that carried a request is always recorded. ``forget`` drops a closed connection's state.
- ``Runtime.note_user``: remembers the proxy login (mitmproxy's ``proxyauth``) of a connection; every hit event of
  that connection carries it as ``user.name``.
- ``Runtime.refuse``: the mark and answer of a flow refused without a rule (error, invalid).
- ``Runtime.hook_error``: a hook that raised: counted, its traceback logged at most every 10 s.
- ``mark``: the ``flow.metadata["enforcer"]`` record of a verdict; ``ip_or_none``: canonical text of an IP literal.

No dataclasses are defined here or in the addons: records live in ``decide`` (see ``addon.py``).
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

from mitmproxy import http
from mitmproxy.connection import Client
from prometheus_client import CollectorRegistry

from enforcer.blocklog import BLOCKS
from enforcer.events import EventWriter, HitEvent
from enforcer.metrics import (
    BLOCKED_TOTAL,
    MONITORED_TOTAL,
    POLICY_INFO,
    POLICY_LAST_RELOAD,
    POLICY_RELOADS_TOTAL,
    POLICY_RULES,
    PROXY_FLOWS_TOTAL,
    LocalCounter,
    Metrics,
)
from enforcer.policy import Match, Policy
from enforcer.policy.addresses import parse_ip_literal
from enforcer.policy.reloader import PolicyHolder
from enforcer.proxy import responses
from enforcer.proxy.blockpage import choose_language
from enforcer.proxy.decide import (
    ALLOWED,
    ERROR,
    PAGE,
    ConnState,
    PendingPage,
    RequestMemo,
    Verdict,
    client_address,
    judge,
)

log = logging.getLogger("enforcer.proxy")

COMPONENT = "proxy"
ERROR_LOG_INTERVAL = 10.0  # seconds between full tracebacks of hook errors (a broken policy would flood the log)


class Runtime:
    def __init__(self) -> None:
        # Construction must stay cheap and side-effect free: mitmproxy re-imports the script on every edit; files,
        # threads and sockets are opened in configure()/running() and released in done() (see lifecycle.py).
        self.holder: PolicyHolder | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.flows = LocalCounter(PROXY_FLOWS_TOTAL, self.registry)
        self.blocked = LocalCounter(BLOCKED_TOTAL, self.registry)
        self.monitored = LocalCounter(MONITORED_TOTAL, self.registry)
        self.metrics = Metrics(
            self.registry, names=(POLICY_RULES, POLICY_RELOADS_TOTAL, POLICY_INFO, POLICY_LAST_RELOAD)
        )
        self.writer = EventWriter(None)
        self._writer_metrics = CollectorRegistry()
        self.writer.register_metrics(self._writer_metrics)
        self.registry.register(self._writer_metrics)
        self.passthrough = True
        self.blocked_connect = PAGE  # enforcer_blocked_connect: page | refuse
        self.conns: dict[str, ConnState] = {}
        self.requests = RequestMemo()
        self.open_pages: collections.Counter[tuple[str, str]] = collections.Counter()  # open block-page tunnels
        self._last_error_log = 0.0
        self._suppressed_errors = 0

    def set_writer(self, writer: EventWriter) -> EventWriter:
        """Make ``writer`` the current one (its counters are what /metrics shows from now on); returns the old one."""
        old, self.writer = self.writer, writer
        # The events module's own collector is bound to one writer: give the new writer a fresh sub-registry and
        # swap that in whole (unregister first: the same family names may be registered only once).
        sub = CollectorRegistry()
        writer.register_metrics(sub)
        self.registry.unregister(self._writer_metrics)
        self.registry.register(sub)
        self._writer_metrics = sub
        return old

    def policy(self) -> Policy:
        holder = self.holder
        if holder is None:
            raise RuntimeError("enforcer: no policy loaded (enforcer_blocklist not configured)")
        return holder.policy

    def state(self, client: Client) -> ConnState:
        state = self.conns.get(client.id)
        if state is None:
            state = self.conns[client.id] = ConnState()
        return state

    def judge(self, match: Match, client: Client) -> Verdict:
        ip, _ = client_address(client.peername)
        return judge(self.policy(), match, time.time_ns() // 1000, ip)

    def record(self, verdict: Verdict, action: str, client: Client, **fields: Any) -> None:
        """Count the decision and, for block matches (enforced or monitored), emit one hit event."""
        self.flows.inc((verdict.outcome,))
        self._hit(verdict, action, client, **fields)

    def _hit(self, verdict: Verdict, action: str, client: Client, **fields: Any) -> None:
        """The hit of a block match: ``enforcer_blocked_total`` (or ``_monitored_total``) and one event."""
        match = verdict.match
        if match is None or not match.blocked:
            return
        if not verdict.enforced:
            # A monitored connection would log the same rule at CONNECT, SNI and server connect: once is enough.
            state = self.state(client)
            key = f"{action}|{match.rule.id}"
            if key in state.logged:
                return
            state.logged.add(key)
        labels = (COMPONENT, match.rule.app, match.rule.category or "", action)
        (self.blocked if verdict.enforced else self.monitored).inc(labels)
        ip, port = client_address(client.peername)
        if verdict.enforced:  # at most one INFO line per app every 10 s (enforcer/blocklog.py, shared with dns)
            target = fields.get("url_full") or fields.get("url_domain") or fields.get("destination_ip") or match.matched
            BLOCKS.blocked(COMPONENT, match.rule.app, match.rule.id, match.rule.source, f"{action} {target}",
                           str(ip) if ip is not None else None)  # fmt: skip
        conn = self.conns.get(client.id)
        if conn is not None and conn.user is not None:
            fields.setdefault("user_name", conn.user)
        event = HitEvent.from_match(
            match,
            action=action,
            component=COMPONENT,
            version=self.holder.policy.fingerprint if self.holder is not None else "",
            enforced=verdict.enforced,
            exempt=verdict.exempt,
            source_ip=str(ip) if ip is not None else None,
            source_port=port,
            **{k: v for k, v in fields.items() if v is not None},
        )
        self.writer.emit(event)

    def answer(self, flow: http.HTTPFlow, verdict: Verdict, action: str, target: str, **fields: Any) -> None:
        """Record the verdict on an HTTP flow (CONNECT or request), mark the flow, and answer 403 when enforced."""
        self.record(verdict, action, flow.client_conn, **fields)
        flow.metadata["enforcer"] = mark(verdict, action)
        if verdict.blocked:
            self.block_page(flow, verdict, target)

    @staticmethod
    def block_page(flow: http.HTTPFlow, verdict: Verdict, target: str) -> None:
        """Answer the flow with the 403 block page of the verdict's rule, in the language the request asks for."""
        assert verdict.match is not None
        lang = choose_language(flow.request.headers.get("accept-language"))
        flow.request.stream = False  # a response and a streamed request body cannot go together
        flow.response = responses.block(verdict.match, target, lang)

    def hold_page(self, flow: http.HTTPFlow, verdict: Verdict, **fields: Any) -> None:
        """Accept an enforced CONNECT so its tunnel can carry the block page; the hit waits for ``settle_page``."""
        assert verdict.match is not None
        self.flows.inc((verdict.outcome,))
        state = self.state(flow.client_conn)
        peer = flow.client_conn.peername
        key = (str(peer[0]) if isinstance(peer, tuple) and peer else "", verdict.match.rule.id)
        if state.page is None:
            self.open_pages[key] += 1
        state.page = PendingPage(verdict, {k: v for k, v in fields.items() if v is not None}, key)
        # Whatever comes through the tunnel (TLS, plain HTTP, raw TCP), the server gate never opens its upstream side.
        state.refused = f"blocked by enforcer rule {verdict.match.rule.id}"
        flow.metadata["enforcer"] = {**mark(verdict, "connect-block"), "page": True}

    def settle_page(self, client: Client, outcome: str | None = None, **fields: Any) -> PendingPage | None:
        """Record the held hit of the client's block-page tunnel, once (``outcome``: also counted in
        ``enforcer_proxy_flows_total`` when recorded); returns the pending page (or None)."""
        state = self.conns.get(client.id)
        page = state.page if state is not None else None
        if page is None or page.recorded:
            return page
        page.recorded = True
        extra = {k: v for k, v in fields.items() if v is not None}
        if "url_full" not in extra and self.open_pages[page.key] > 1:
            return page  # a spare tunnel beside another one of the same client and rule: the same attempt
        if outcome is not None:
            self.flows.inc((outcome,))
        self._hit(page.verdict, "connect-block", client, **{**page.fields, **extra})
        return page

    def forget(self, client: Client) -> None:
        """Drop the state of a closed client connection."""
        state = self.conns.pop(client.id, None)
        if state is not None and state.page is not None:
            self.open_pages[state.page.key] -= 1
            if self.open_pages[state.page.key] <= 0:
                del self.open_pages[state.page.key]

    def note_user(self, flow: http.HTTPFlow) -> None:
        """Remember the proxy login mitmproxy's proxyauth put on the flow (a (user, password) pair) for the events
        of this connection. Only authenticated connections get a state for it; it goes with the connection."""
        auth = flow.metadata.get("proxyauth")
        if isinstance(auth, tuple) and auth and isinstance(auth[0], str) and auth[0]:
            state = self.state(flow.client_conn)
            if state.user != auth[0]:
                state.user = auth[0]

    @staticmethod
    def refuse(flow: http.HTTPFlow, metadata: dict[str, Any], response: http.Response) -> None:
        """Answer a flow refused without a rule (policy error, unreadable host) instead of forwarding it."""
        flow.metadata["enforcer"] = metadata
        flow.request.stream = False
        flow.response = response

    def hook_error(self, hook: str) -> None:
        self.flows.inc((ERROR,))
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL:
            self._last_error_log = now
            extra = f" ({self._suppressed_errors} more since the last report)" if self._suppressed_errors else ""
            self._suppressed_errors = 0
            log.exception("enforcer: %s failed; the flow is refused (fail closed)%s", hook, extra)
        else:
            self._suppressed_errors += 1


def mark(verdict: Verdict, action: str) -> dict[str, Any]:
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


def ip_or_none(host: str | None) -> str | None:
    """The canonical text of an IP literal in any spelling (``1296740613`` -> ``77.74.177.5``); None for a name."""
    addr = parse_ip_literal(host) if host else None
    return str(addr) if addr is not None else None
