"""The tunnel gates: what a client asks for before any HTTP request is seen (CONNECT and the TLS ClientHello).

- ``ConnectGate.http_connect``: CONNECT to a blocked host or to a literal IP (any spelling) in a blocked CIDR ->
  the 403 block page before any TLS.
- ``TlsGate.tls_clienthello``: a blocked SNI, or a blocked CONNECT host / destination address behind an innocent
  SNI -> never decrypted, and the connection is marked refused (``ServerGate`` then never opens its upstream side,
  so the client's TLS goes nowhere). Otherwise passed through undecrypted (``enforcer_passthrough``) unless
  ``needs_decryption``: a name the client gave has url/store rules, or it named nothing (a bare IP without SNI).
"""

from __future__ import annotations

from mitmproxy import http, tls

from enforcer.policy import Policy
from enforcer.policy.addresses import parse_ip_literal
from enforcer.proxy import responses
from enforcer.proxy.decide import ALLOWED, ERROR
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
            match = rt.policy().match_host(req.host)
            if match is None:
                rt.flows.inc((ALLOWED,))
                return
            verdict = rt.judge(match, flow.client_conn)
            rt.answer(
                flow,
                verdict,
                "connect-block",
                f"{req.host}:{req.port}",
                url_domain=req.host,
                destination_ip=ip_or_none(req.host),
                destination_port=req.port,
            )
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
