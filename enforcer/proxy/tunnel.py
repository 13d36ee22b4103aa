"""The tunnel gates: what a client asks for before any HTTP request is seen (CONNECT and the TLS ClientHello).

- ``ConnectGate.http_connect``: CONNECT to a blocked host or to a literal IP (any spelling) in a blocked CIDR.
  ``enforcer_blocked_connect=page`` (the default): the CONNECT is accepted (200) and marked refused, so nothing
  upstream is ever opened for it; the client's TLS is completed with a certificate from mitmproxy's CA for its SNI
  and the first request inside gets the 403 block page (``RequestJudge``), which a browser shows, where a 403 on
  the CONNECT only gives ERR_TUNNEL_CONNECTION_FAILED. ``refuse``: the 403 block page on the CONNECT, before any TLS.
- ``TlsGate.tls_clienthello``: a block-page tunnel is decrypted whatever its SNI names (it only ever carries the
  page). Otherwise a blocked SNI, or a blocked CONNECT host / destination address behind an innocent SNI -> never
  decrypted, and the connection is marked refused (``ServerGate`` then never opens its upstream side, so the
  client's TLS goes nowhere). Otherwise passed through undecrypted (``enforcer_passthrough``) unless
  ``needs_decryption``: a name the client gave has url/store rules, or it named nothing (a bare IP without SNI).
- ``TlsGate.tls_failed_client``: a client that refuses the handshake of a block-page tunnel (it does not trust the
  CA: a pinned app) is still blocked; its hit is recorded then, once, with ``tls.established`` false and
  ``enforcer_proxy_flows_total{outcome="handshake_failed"}``.
"""

from __future__ import annotations

from mitmproxy import http, tls

from enforcer.policy import Policy
from enforcer.policy.addresses import parse_ip_literal
from enforcer.proxy import responses
from enforcer.proxy.decide import ALLOWED, ERROR, HANDSHAKE_FAILED, PAGE
from enforcer.proxy.runtime import Runtime, ip_or_none


class ConnectGate:
    name = "enforcer_connect"

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        rt, req = self.rt, flow.request
        try:
            rt.note_user(flow)
            match = rt.policy().match_host(req.host)
            if match is None:
                rt.flows.inc((ALLOWED,))
                return
            verdict = rt.judge(match, flow.client_conn)
            fields = {"url_domain": req.host, "destination_ip": ip_or_none(req.host), "destination_port": req.port}
            if verdict.blocked and rt.blocked_connect == PAGE:
                rt.hold_page(flow, verdict, **fields)
                return
            rt.answer(flow, verdict, "connect-block", f"{req.host}:{req.port}", **fields)
        except Exception:
            rt.hook_error("http_connect")
            rt.refuse(flow, {"outcome": ERROR}, responses.error(f"{req.host}:{req.port}"))


class TlsGate:
    name = "enforcer_tls"

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        rt, client = self.rt, data.context.client
        try:
            state = rt.conns.get(client.id)
            if state is not None and state.page is not None:
                # Accepted to show the block page: decrypt, with a certificate for the SNI from mitmproxy's CA (no
                # upstream certificate is fetched under connection_strategy=lazy; the server gate refuses any dial).
                if data.client_hello.sni:
                    state.page.fields.setdefault("tls_server_name", data.client_hello.sni)
                data.ignore_connection = False
                return
            policy = rt.policy()
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
                verdict = rt.judge(match, client)
                rt.record(
                    verdict,
                    "tls-block",
                    client,
                    tls_server_name=sni,
                    url_domain=host,
                    destination_ip=ip_or_none(dest),
                    destination_port=address[1] if address else None,
                )
                if verdict.blocked:
                    self._refuse(data, f"blocked by enforcer rule {match.rule.id}")
                    return
            if rt.passthrough and not data.ignore_connection and not needs_decryption(policy, sni, dest):
                data.ignore_connection = True
        except Exception:
            rt.hook_error("tls_clienthello")
            self._refuse(data, "enforcer: policy check failed")

    def tls_failed_client(self, data: tls.TlsData) -> None:
        rt = self.rt
        try:
            state = rt.conns.get(data.context.client.id)
            if state is not None and state.page is not None:
                rt.settle_page(data.context.client, HANDSHAKE_FAILED, tls_established=False)
        except Exception:
            rt.hook_error("tls_failed_client")

    def _refuse(self, data: tls.ClientHelloData, why: str) -> None:
        # Never decrypt it, and make sure nothing upstream is ever opened for it: the server_connect gate reads the
        # connection state (that also covers upstream mode, where the opened server is the upstream proxy), and
        # server.error makes mitmproxy itself drop the attempt.
        self.rt.state(data.context.client).refused = why
        data.ignore_connection = True
        data.context.server.error = why


def needs_decryption(policy: Policy, sni: str | None, dest: str | None) -> bool:
    """Whether a TLS connection must be decrypted for url/store rules to see its requests.

    Every name the client gave counts, not the SNI alone: ``CONNECT dldir1.qq.com:443`` with SNI ``example.com`` still
    reaches dldir1.qq.com. A client that names nothing (a literal IP, no SNI) is decrypted whenever the policy has
    url/store rules: the Host header inside is then the only name it will show.
    """
    names = [h for h in (sni, dest) if h and parse_ip_literal(h) is None]
    if any(policy.has_url_rules(h) for h in names):
        return True
    return not names and bool(policy.urls)
