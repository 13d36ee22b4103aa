"""The request judge: every plain HTTP request and every request inside intercepted TLS (HTTP/1 and HTTP/2,
websocket upgrades) before its body is read.

- ``RequestJudge.requestheaders``: URL, store and name rules on every host the request names (destination,
  :authority, Host, the tunnel's CONNECT host and SNI; ``decide.request_hosts``) -> 403 block page; a Host that can
  be read two ways (two Host fields, ``host:80:80``, userinfo) -> 400; no host the matcher can read -> 403 error page.
  Inside a block-page tunnel (a blocked CONNECT accepted by ``ConnectGate``) every request gets the CONNECT rule's
  block page, whatever it names: the first one records the tunnel's hit (``Runtime.settle_page``), later ones (a
  browser's retries, favicon) only count as blocked flows.
  A url/store allow rule that let the request through is remembered on the connection, so ``ServerGate`` does not
  refuse the host it was allowed for by a broader name rule. The URL decision goes through the runtime's
  ``decide.RequestMemo``: a request seen before under the same policy is not parsed and matched again.
- ``connection_hosts``: the names of the connection a request arrived on that the origin may route by.
"""

from __future__ import annotations

from mitmproxy import http

from enforcer.policy.urlrules import MAX_PATH
from enforcer.proxy import responses
from enforcer.proxy.decide import (
    ALLOWED,
    BLOCKED,
    ERROR,
    INVALID,
    BadHost,
    PathTooLong,
    UnparsableRequest,
    request_hosts,
    url_for,
)
from enforcer.proxy.runtime import Runtime, ip_or_none, mark


class RequestJudge:
    name = "enforcer_request"

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        rt, req = self.rt, flow.request
        try:
            rt.note_user(flow)
            state = rt.conns.get(flow.client_conn.id)
            if state is not None and state.page is not None:
                self._page(flow)
                return
            hosts = request_hosts(req.host, req.headers.get_all("host"), req.authority, connection_hosts(flow))
            match, url = rt.requests.match(rt.policy(), req.scheme, hosts, req.port, req.path, req.method)
            if match is None:
                rt.flows.inc((ALLOWED,))
                return
            verdict = rt.judge(match, flow.client_conn)
            if not match.blocked and match.rule.kind in ("url", "store"):
                rt.state(flow.client_conn).url_allowed.update(hosts)
            rt.answer(
                flow,
                verdict,
                "http-block",
                url,
                url_full=url,
                url_domain=req.host_header or req.host,
                http_method=req.method,
                destination_ip=ip_or_none(req.host),
                destination_port=req.port,
            )
        except BadHost as exc:
            rt.flows.inc((INVALID,))
            rt.refuse(flow, {"outcome": INVALID, "reason": str(exc)}, responses.bad_request(str(exc)))
        except PathTooLong as exc:
            rt.flows.inc((INVALID,))
            rt.refuse(flow, {"outcome": INVALID, "reason": str(exc)}, responses.path_too_long(str(exc), MAX_PATH))
        except UnparsableRequest:
            rt.flows.inc((INVALID,))
            rt.refuse(flow, {"outcome": INVALID}, responses.error(req.host_header or req.host))
        except Exception:
            rt.hook_error("requestheaders")
            rt.refuse(flow, {"outcome": ERROR}, responses.error(req.host_header or req.host))

    def _page(self, flow: http.HTTPFlow) -> None:
        """A request inside a block-page tunnel: the page of the CONNECT's rule, never anything upstream."""
        rt, req, client = self.rt, flow.request, flow.client_conn
        url = url_for(req.scheme, req.host, req.port, req.path)
        rt.flows.inc((BLOCKED,))
        page = rt.settle_page(
            client, url_full=url, http_method=req.method, tls_established=True if client.tls_established else None
        )
        assert page is not None
        flow.metadata["enforcer"] = {**mark(page.verdict, "connect-block"), "page": True}
        rt.block_page(flow, page.verdict, url)


def connection_hosts(flow: http.HTTPFlow) -> list[str | None]:
    """Names of the connection a request arrived on that the origin may route by: TLS SNI and the CONNECT host."""
    client = flow.client_conn
    hosts: list[str | None] = [client.sni]
    if client.tls_established and flow.server_conn.address:
        hosts.append(str(flow.server_conn.address[0]))
    return hosts
