"""Helpers for the addon unit tests: mitmproxy flows and hook data built the way mitmproxy builds them.

- ``connect_flow`` / ``request_flow``: ``tflow`` HTTP flows for a CONNECT and for a proxied request.
- ``tunnel_response``: what the client of a CONNECT is answered: the answer to the CONNECT itself (``refuse`` mode,
  errors) or, for a CONNECT accepted to show the block page (the default ``page`` mode), the answer to a first request
  sent inside that tunnel (same client connection).
- ``client_hello_data``: a REAL TLS ClientHello (written by Python's ssl module into a memory BIO, parsed by
  mitmproxy's own ``parse_client_hello``) wrapped in ``ClientHelloData`` with a fresh connection context. The
  client SSL context is built once: loading the system CA store took ~40 ms per hello, most of the table's time.
- ``run_hook``: runs one (synchronous) hook on an addon and every addon nested in it, in chain order, the way mitmproxy
  does (``EnforcerAddon`` is a composition of addons).
- ``server_hook_data``: ``ServerConnectionHookData`` for a server address (and SNI); ``gate`` runs the (async)
  ``server_connect`` hook to completion for an address that needs no lookup, and fails if it would look one up.
- ``dns_flow``: a DNS flow asking one question.
- ``harness``: ``taddons.context`` that also closes the event loop it had to create (an unclosed loop is finalised
  by the GC at a random moment, which on CPython 3.11.7 can corrupt the AST recursion counter of a later compile:
  "SystemError: AST constructor recursion depth mismatch").
- ``write_policy``: a small temporary blocklist (monitor mode, exempt clients, hostile notice text).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import ssl
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mitmproxy import dns, http
from mitmproxy.addonmanager import traverse
from mitmproxy.connection import Server
from mitmproxy.net.dns import classes, types
from mitmproxy.options import Options
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow, tutils
from mitmproxy.tls import ClientHelloData


@contextlib.contextmanager
def harness(*addons: Any) -> Iterator[taddons.context]:
    try:
        asyncio.get_running_loop()
        own_loop = False
    except RuntimeError:
        own_loop = True
    with taddons.context(*addons) as tctx:
        try:
            yield tctx
        finally:
            if own_loop:
                tctx.master.event_loop.close()


def run_hook(addon: Any, name: str, *args: Any) -> None:
    """Run the synchronous hook ``name`` on ``addon`` and its nested addons, as mitmproxy's addon manager does."""
    ran = False
    for a in traverse([addon]):
        func = getattr(a, name, None)
        if func is not None:
            assert not inspect.iscoroutinefunction(func), f"{name} is async: await it (see gate())"
            func(*args)
            ran = True
    assert ran, f"no addon in {addon!r} implements {name}"


def connect_flow(host: str, port: int = 443, peer: str = "10.1.2.3") -> http.HTTPFlow:
    f = tflow.tflow()
    f.client_conn.peername = (peer, 50000)
    f.request = http.Request.make("CONNECT", f"http://example.invalid:{port}/")
    f.request.host = host
    f.request.port = port
    f.request.authority = f"{host}:{port}"
    f.request.path = ""
    return f


def tunnel_response(addon: Any, connect: http.HTTPFlow, path: str = "/") -> http.Response | None:
    """The answer a CONNECT's client gets: the CONNECT's own response, else that of a request inside its tunnel."""
    if connect.response is not None or not connect.metadata.get("enforcer", {}).get("page"):
        return connect.response
    f = tflow.tflow()
    f.client_conn = connect.client_conn
    f.request = http.Request.make("GET", "https://example.invalid/")
    f.request.host = connect.request.host
    f.request.port = connect.request.port
    f.request.path = path
    run_hook(addon, "requestheaders", f)
    return f.response


def request_flow(
    url: str, method: str = "GET", peer: str = "10.1.2.3", host_header: str | None = None
) -> http.HTTPFlow:
    f = tflow.tflow()
    f.client_conn.peername = (peer, 50001)
    f.request = http.Request.make(method, url)
    if host_header is not None:
        f.request.host_header = host_header
    return f


@functools.cache
def _client_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def client_hello_bytes(sni: str | None) -> bytes:
    ctx = _client_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def client_hello_data(
    sni: str | None, address: tuple[str, int] | None = ("10.9.9.9", 443), peer: str = "10.1.2.3"
) -> ClientHelloData:
    client = tflow.tclient_conn()
    client.peername = (peer, 50002)
    context = Context(client, Options())
    context.server = Server(address=address)
    hello = parse_client_hello(client_hello_bytes(sni))
    assert hello is not None
    return ClientHelloData(context, hello)


def server_hook_data(address: tuple[str, int] | None, sni: str | None = None, peer: str = "10.1.2.3"):
    client = tflow.tclient_conn()
    client.peername = (peer, 50003)
    server = Server(address=address)
    server.sni = sni
    return ServerConnectionHookData(client=client, server=server)


def gate(addon: Any, data: ServerConnectionHookData) -> ServerConnectionHookData:
    """Run the ``server_connect`` hooks of ``addon`` (and its nested addons), which must finish without awaiting
    anything (no name lookup)."""
    for a in traverse([addon]):
        if not hasattr(a, "server_connect"):
            continue
        coro = a.server_connect(data)
        try:
            coro.send(None)
        except StopIteration:
            continue
        coro.close()
        raise AssertionError(f"server_connect looked up {data.server.address!r}; use an async test for names")
    return data


def dns_flow(name: str, qtype: int = types.A, peer: str = "10.1.2.3") -> dns.DNSFlow:
    f = tflow.tdnsflow(req=tutils.tdnsreq(questions=[dns.Question(name, qtype, classes.IN)]))
    f.client_conn.peername = (peer, 50004)
    return f


def write_policy(
    folder: Path,
    *,
    effective: str = "2023-10-30",
    exempt: str = "[]",
    notice: str = "Blocked by policy.",
    name: str = "Test App",
    rule_id: str | None = None,
    extra_rules: str = "",
) -> Path:
    """A one-app blocklist: domain blocked.test, url shared.test/app/*, cidr 192.0.2.0/24 (TEST-NET-1)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "testapp.yaml"
    rid = f"\n    id: {rule_id!r}" if rule_id else ""
    text = (
        textwrap.dedent(
            f"""\
            app: testapp
            name: {name!r}
            vendor: Test Vendor
            policy:
              effective: {effective}
              exempt_clients: {exempt}
              notice: {notice!r}
              reference: "Directive <b>42</b> & co"
            block:
              - domain: blocked.test
                category: messaging@RID@
              - url: "shared.test/app/*"
                category: download
              - cidr: 192.0.2.0/24
                category: messaging
            """
        ).replace("@RID@", rid)
        + extra_rules
    )
    path.write_text(text, encoding="utf-8")
    return path
