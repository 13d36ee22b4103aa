"""The block-page tunnel (``enforcer_blocked_connect=page``, the default) through the addon's hooks: what is
answered, and that each attempt is counted once whatever the client does after the CONNECT.

A blocked CONNECT is accepted and held; its hit (``enforcer_blocked_total`` and one event) is recorded at the first
request inside (the page), at a failed TLS handshake, or when the client leaves; a spare tunnel beside an open one
is the same attempt. The proxy login (mitmproxy's proxyauth metadata) goes into ``user.name``. End to end with
curl and Chromium: test_e2e_blockpage.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions, tls

from enforcer.events import iter_events
from enforcer.proxy.addon import EnforcerAddon
from tests.conftest import BLOCKLISTS
from tests.proxy.helpers import (
    client_hello_data,
    connect_flow,
    gate,
    harness,
    request_flow,
    run_hook,
    server_hook_data,
    tunnel_response,
    write_policy,
)

LABELS = {"component": "proxy", "app": "wechat", "category": "messaging", "action": "connect-block"}


def count(a: EnforcerAddon, name: str, **labels: str) -> float:
    return a.registry.get_sample_value(name, labels) or 0.0


def docs(path: Path) -> list[dict[str, Any]]:
    return list(iter_events(path)) if path.exists() else []


def held(a: EnforcerAddon, host: str = "weixin.qq.com", sni: str | None = "weixin.qq.com", peer: str = "10.1.2.3"):
    """CONNECT ``host`` then its ClientHello on the same client connection; returns (connect flow, hello data)."""
    hello = client_hello_data(sni, (host, 443), peer=peer)
    c = connect_flow(host, peer=peer)
    c.client_conn = hello.context.client
    run_hook(a, "http_connect", c)
    run_hook(a, "tls_clienthello", hello)
    return c, hello


@pytest.fixture
def addon(tmp_path: Path) -> Any:
    events = tmp_path / "events.jsonl"
    a = EnforcerAddon()
    with harness(a) as tctx:
        tctx.configure(a, enforcer_blocklist=str(BLOCKLISTS), enforcer_events=str(events))
        yield a, events, tctx
    run_hook(a, "done")


def test_the_tunnel_is_accepted_decrypted_and_every_request_gets_the_page(addon: Any) -> None:
    a, events, _ = addon
    c, hello = held(a)
    assert c.response is None and c.metadata["enforcer"]["page"] is True  # mitmproxy answers 200
    assert hello.ignore_connection is False and hello.context.server.error is None  # decrypted with the proxy's cert
    assert count(a, "enforcer_blocked_total", **LABELS) == 0  # held until the outcome is known
    # Whatever the server connection of this tunnel would be (upstream mode: the upstream proxy), it is refused.
    upstream = server_hook_data(("127.0.0.1", 3128))
    upstream.client = c.client_conn
    assert gate(a, upstream).server.error == "blocked by enforcer rule wechat:domain:weixin.qq.com"
    answers = []
    for path, lang in (("/a", "fr-CA"), ("/favicon.ico", None), ("/a", "en")):
        f = request_flow(f"https://weixin.qq.com{path}")
        f.client_conn = c.client_conn
        if lang:
            f.request.headers["Accept-Language"] = lang
        run_hook(a, "requestheaders", f)
        answers.append(f.response)
    assert [r.status_code for r in answers] == [403, 403, 403]
    assert [r.headers["Content-Language"] for r in answers] == ["fr", "en", "en"]
    assert all(r.headers["X-Enforcer-Rule"] == "wechat:domain:weixin.qq.com" for r in answers)
    run_hook(a, "client_disconnected", c.client_conn)
    a.runtime.writer.flush()
    (doc,) = docs(events)
    assert doc["event"]["action"] == "connect-block" and doc["url"]["full"] == "https://weixin.qq.com/a"
    assert c.client_conn.tls_established  # tflow's client connection has done its TLS handshake
    assert doc["tls"] == {"client": {"server_name": "weixin.qq.com"}, "established": True}
    assert count(a, "enforcer_blocked_total", **LABELS) == 1
    assert count(a, "enforcer_proxy_flows_total", outcome="blocked") == 4  # the CONNECT and three requests
    assert not a.runtime.conns and not a.runtime.open_pages


def test_a_failed_handshake_is_recorded_once(addon: Any) -> None:
    a, events, _ = addon
    c, hello = held(a)
    failed = tls.TlsData(hello.context.client, hello.context)
    run_hook(a, "tls_failed_client", failed)
    run_hook(a, "tls_failed_client", failed)  # mitmproxy calls it once; a second call must not count again
    run_hook(a, "client_disconnected", c.client_conn)
    a.runtime.writer.flush()
    (doc,) = docs(events)
    assert doc["tls"] == {"client": {"server_name": "weixin.qq.com"}, "established": False}
    assert count(a, "enforcer_blocked_total", **LABELS) == 1
    assert count(a, "enforcer_proxy_flows_total", outcome="handshake_failed") == 1


def test_a_client_leaving_before_tls_is_recorded_once(addon: Any) -> None:
    a, events, _ = addon
    c = connect_flow("129.226.3.47")
    run_hook(a, "http_connect", c)
    run_hook(a, "client_disconnected", c.client_conn)
    a.runtime.writer.flush()
    (doc,) = docs(events)
    assert doc["rule"]["id"].startswith("wechat:cidr:") and "tls" not in doc
    assert doc["destination"] == {"ip": "129.226.3.47", "port": 443}


def test_a_spare_tunnel_beside_an_open_one_is_the_same_attempt(addon: Any) -> None:
    a, events, _ = addon
    used, _ = held(a)
    spare, _ = held(a)  # the browser's second connection, never used
    assert tunnel_response(a, used) is not None
    run_hook(a, "client_disconnected", spare.client_conn)
    run_hook(a, "client_disconnected", used.client_conn)
    a.runtime.writer.flush()
    assert len(docs(events)) == 1
    # Another client, or the same one later, is another attempt.
    other, _ = held(a, peer="10.1.2.4")
    later, _ = held(a)
    run_hook(a, "client_disconnected", other.client_conn)
    run_hook(a, "client_disconnected", later.client_conn)
    a.runtime.writer.flush()
    assert [d["source"]["ip"] for d in docs(events)] == ["10.1.2.3", "10.1.2.4", "10.1.2.3"]
    assert count(a, "enforcer_blocked_total", **LABELS) == 3


def test_two_used_tunnels_are_two_page_views(addon: Any) -> None:
    a, events, _ = addon
    first, _ = held(a)
    second, _ = held(a)
    assert tunnel_response(a, first) is not None and tunnel_response(a, second) is not None
    a.runtime.writer.flush()
    assert len(docs(events)) == 2


def test_the_proxy_login_is_in_the_events(addon: Any) -> None:
    a, events, _ = addon
    c = connect_flow("weixin.qq.com")
    c.metadata["proxyauth"] = ("alice", "pw")  # what mitmproxy's proxyauth leaves on an authenticated CONNECT
    run_hook(a, "http_connect", c)
    assert tunnel_response(a, c) is not None
    r = request_flow("http://dldir1.qq.com/weixin/x.apk", peer="10.1.2.9")
    r.metadata["proxyauth"] = ("bob", "pw")
    run_hook(a, "requestheaders", r)
    anonymous = request_flow("http://dldir1.qq.com/weixin/y.apk", peer="10.1.2.8")
    run_hook(a, "requestheaders", anonymous)
    a.runtime.writer.flush()
    users = [(d["event"]["action"], d.get("user")) for d in docs(events)]
    assert users == [("connect-block", {"name": "alice"}), ("http-block", {"name": "bob"}), ("http-block", None)]


def test_refuse_mode_and_option_values(addon: Any) -> None:
    a, _, tctx = addon
    tctx.configure(a, enforcer_blocked_connect="refuse")
    c = connect_flow("weixin.qq.com")
    run_hook(a, "http_connect", c)
    assert c.response is not None and c.response.status_code == 403 and "page" not in c.metadata["enforcer"]
    assert count(a, "enforcer_blocked_total", **LABELS) == 1  # recorded at the CONNECT
    with pytest.raises(exceptions.OptionsError):
        tctx.configure(a, enforcer_blocked_connect="drop")
    assert a.runtime.blocked_connect == "refuse"


def test_a_monitored_connect_is_not_held(tmp_path: Path) -> None:
    write_policy(tmp_path / "bl", effective="2999-01-01")
    a = EnforcerAddon()
    with harness(a) as tctx:
        tctx.configure(a, enforcer_blocklist=str(tmp_path / "bl"))
        c = connect_flow("blocked.test")
        run_hook(a, "http_connect", c)
        assert c.response is None and "page" not in c.metadata["enforcer"] and not a.runtime.open_pages
        run_hook(a, "done")
