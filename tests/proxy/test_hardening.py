"""Issue 10, the proxy: each hole as a family, through the real hooks (mitmproxy's taddons/tflow, real ClientHellos).

- IP literals in every spelling glibc accepts, in CONNECT targets, absolute URIs and Host headers; the
  ``server_connect`` gate resolving a name itself (``localhost``, from /etc/hosts: no network) and judging every
  address it gets, then dialling the address it judged.
- The decision to decrypt: SNI, CONNECT host and destination address all count.
- Host anomalies: 400 for a Host that reads two ways, every candidate judged otherwise.

The shared table (tests/data/match_cases.yaml) adds its IP-spelling and path rows through test_addon.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http

from enforcer.proxy.addon import EnforcerAddon
from enforcer.proxy.decide import BadHost, authority_host, request_hosts
from enforcer.proxy.runtime import ip_or_none
from tests.conftest import BLOCKLISTS
from tests.netns import loopback_only_netns
from tests.policy.policy_helpers import app_yaml, write
from tests.proxy.helpers import (
    client_hello_data,
    connect_flow,
    gate,
    harness,
    request_flow,
    run_hook,
    server_hook_data,
    tunnel_response,
)

SPELLINGS = [
    "1296740613",
    "0x4d4ab105",
    "0115.0112.0261.05",
    "77.74.45317",
    "77.4894981",
    "0x4d.0112.45317",
    "::ffff:77.74.177.5",
    "::ffff:4d4a:b105",
    "64:ff9b::4d4a:b105",
    "2002:4d4a:b105::",
]


@pytest.fixture(scope="module")
def shipped() -> Iterator[EnforcerAddon]:
    a = EnforcerAddon()
    with harness(a) as tctx:
        tctx.configure(a, enforcer_blocklist=str(BLOCKLISTS))
        yield a
    run_hook(a, "done")


def _addon(tctx: Any, folder: Path, body: str) -> EnforcerAddon:
    write(folder, "t.yaml", app_yaml("t", body))
    a = EnforcerAddon()
    tctx.master.addons.add(a)
    tctx.configure(a, enforcer_blocklist=str(folder))
    return a


def _blocked(f: http.HTTPFlow, rule_prefix: str = "") -> bool:
    return (
        f.response is not None
        and f.response.status_code == 403
        and f.response.headers["X-Enforcer-Rule"].startswith(rule_prefix)
    )


# -- 1. an IP literal is the IP it denotes ---------------------------------------------------------------------
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_literal_spellings_blocked_in_connect_uri_and_host(shipped: EnforcerAddon, spelling: str) -> None:
    c = connect_flow(spelling)
    run_hook(shipped, "http_connect", c)
    response = tunnel_response(shipped, c)  # the block page inside the accepted tunnel (page mode, the default)
    assert response is not None and response.headers["X-Enforcer-Rule"] == "kaspersky:cidr:77.74.176.0/21", spelling
    authority = f"[{spelling}]" if ":" in spelling else spelling
    r = request_flow(f"http://{authority}/index/u1313g.xml")
    run_hook(shipped, "requestheaders", r)
    assert _blocked(r, "kaspersky:cidr:"), spelling
    h = request_flow("http://192.168.7.7/", host_header=authority)
    run_hook(shipped, "requestheaders", h)
    assert _blocked(h, "kaspersky:cidr:"), spelling
    hook = gate(shipped, server_hook_data((spelling, 443)))
    assert hook.server.error and "kaspersky:cidr:77.74.176.0/21" in hook.server.error


def test_event_names_the_canonical_address(shipped: EnforcerAddon) -> None:
    c = connect_flow("0x4d4ab105")
    run_hook(shipped, "http_connect", c)
    assert c.metadata["enforcer"]["rule"] == "kaspersky:cidr:77.74.176.0/21"
    assert ip_or_none("0x4d4ab105") == "77.74.177.5" and ip_or_none("[::ffff:4d4a:b105]") == "::ffff:4d4a:b105"
    assert ip_or_none("weixin.qq.com") is None


async def test_gate_judges_every_address_a_name_resolves_to(tmp_path: Path) -> None:
    # localhost resolves from /etc/hosts (no network): 127.0.0.1 and, where configured, ::1.
    with harness() as tctx:
        a = _addon(tctx, tmp_path / "v4", "block:\n  - cidr: 127.0.0.0/8\n    category: messaging\n")
        hook = server_hook_data(("localhost", 80))
        await a.server.server_connect(hook)
        assert hook.server.error == "blocked by enforcer rule t:cidr:127.0.0.0/8"
        assert hook.server.address == ("localhost", 80)  # refused before any pin
        assert a.registry.get_sample_value("enforcer_blocked_total", _labels("connect-block")) == 1
        run_hook(a, "done")
    with harness() as tctx:
        b = _addon(tctx, tmp_path / "other", "block:\n  - cidr: 10.0.0.0/8\n    category: messaging\n")
        ok = server_hook_data(("localhost", 8080))
        await b.server.server_connect(ok)
        assert ok.server.error is None
        # Pinned to an address that was judged, and renamed back once connected.
        assert ok.server.address is not None
        pinned = ipaddress.ip_address(ok.server.address[0])
        assert pinned.is_loopback and ok.server.address[1] == 8080
        b.server.server_connected(ok)
        assert ok.server.address == ("localhost", 8080)
        assert not b.server.pinned
        run_hook(b, "done")


def _labels(action: str) -> dict[str, str]:
    return {"component": "proxy", "app": "t", "category": "messaging", "action": action}


async def test_gate_fails_closed_when_a_name_does_not_resolve(tmp_path: Path) -> None:
    with harness() as tctx:
        a = _addon(tctx, tmp_path, "block:\n  - cidr: 192.0.2.0/24\n    category: messaging\n")
        with loopback_only_netns():  # no route to any nameserver: the lookup fails fast
            hook = server_hook_data(("nothing-here.enforcer-test.invalid", 443))
            await a.server.server_connect(hook)
        assert hook.server.error is not None and hook.server.error.startswith("cannot resolve nothing-here")
        run_hook(a, "done")


# -- 2. decryption is not decided by the SNI alone -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("connect_host", "sni", "decrypt"),
    [
        ("dldir1.qq.com", "example.com", True),  # the hole: a url-rule host behind an innocent SNI
        ("dldir1v6.qq.com", "www.example.org", True),
        ("play.google.com", "example.com", True),  # the store half of the ban
        ("apps.apple.com", "example.com", True),
        ("itunes.apple.com", "cdn.example.net", True),
        ("example.com", "dldir1.qq.com", True),  # and the other way round (as before)
        ("8.8.8.8", None, True),  # a bare IP without a name: only the Host header will tell
        ("0x08080808", None, True),
        ("www.example.org", None, False),  # a named host without url rules stays private
        ("www.example.org", "www.example.org", False),
        ("10.9.9.9", "www.example.org", False),
    ],
)
def test_decrypt_when_any_name_has_url_rules(
    shipped: EnforcerAddon, connect_host: str, sni: str | None, decrypt: bool
) -> None:
    data = client_hello_data(sni, (connect_host, 443))
    run_hook(shipped, "tls_clienthello", data)
    assert data.ignore_connection is not decrypt
    assert data.context.server.error is None


def test_bare_ip_without_sni_in_a_blocked_range_is_refused(shipped: EnforcerAddon) -> None:
    for ip in ("77.74.177.5", "1296740613", "::ffff:4d4a:b105"):
        data = client_hello_data(None, (ip, 443))
        run_hook(shipped, "tls_clienthello", data)
        assert data.ignore_connection and data.context.server.error, ip


def test_request_inside_a_mismatched_tunnel_is_judged_on_the_connect_host(shipped: EnforcerAddon) -> None:
    # CONNECT dldir1.qq.com, SNI example.com, Host example.com, GET /weixin/x.apk: decrypted (above), then judged.
    f = request_flow("https://example.com/weixin/android/x.apk")
    f.client_conn.sni = "example.com"
    f.server_conn.address = ("dldir1.qq.com", 443)
    run_hook(shipped, "requestheaders", f)
    assert _blocked(f, "wechat:url:dldir1.qq.com/weixin/*")
    # ... and on the SNI when that is the url-rule host.
    g = request_flow("https://example.com/store/apps/details?id=com.tencent.mm")
    g.client_conn.sni = "play.google.com"
    g.server_conn.address = ("203.0.113.1", 443)
    run_hook(shipped, "requestheaders", g)
    assert _blocked(g, "wechat:store:wechat")
    # Other paths through the same tunnel pass.
    ok = request_flow("https://example.com/qqfile/QQ.exe")
    ok.client_conn.sni = "example.com"
    ok.server_conn.address = ("dldir1.qq.com", 443)
    run_hook(shipped, "requestheaders", ok)
    assert ok.response is None


# -- 4. Host header anomalies ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        "weixin.qq.com:80:80",
        "www.example.org:80:80",
        "user@www.example.org",
        "weixin.qq.com@www.example.org",
        "www.example.org:99999",
        "www.example.org:8o",
        "www.example.org:-1",
        "[::1",
        "[::1]x",
        "[www.example.org]",
        "www.example.org/x",
        "www.example.org\\x",
        "www.example.org?x",
        "www.example.org#x",
        "www.example.org, weixin.qq.com",
        "www.example.org weixin.qq.com",
        "weixin%2eqq.com",
        ":80",
    ],
)
def test_ambiguous_host_is_refused_with_400(shipped: EnforcerAddon, value: str) -> None:
    with pytest.raises(BadHost):
        authority_host(value)
    f = request_flow("http://192.168.7.7/", host_header=value)
    run_hook(shipped, "requestheaders", f)
    assert f.response is not None and f.response.status_code == 400, value
    assert f.metadata["enforcer"]["outcome"] == "invalid"


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("www.example.org", "www.example.org"),
        ("www.example.org:8080", "www.example.org"),
        ("WWW.Example.ORG.", "WWW.Example.ORG."),
        ("[2001:db8::1]:8080", "2001:db8::1"),
        ("[::ffff:4d4a:b105]", "::ffff:4d4a:b105"),
        ("例子.wechat.com", "例子.wechat.com"),
        ("www.example.org:", "www.example.org"),
        ("", None),
    ],
)
def test_plain_hosts_are_read(value: str, host: str | None) -> None:
    assert authority_host(value) == host


@pytest.mark.parametrize(
    "values",
    [
        ["www.example.org", "weixin.qq.com"],
        ["weixin.qq.com", "www.example.org"],
        ["www.example.org", "www.example.org"],
    ],
)
def test_two_host_fields_are_refused(shipped: EnforcerAddon, values: list[str]) -> None:
    f = request_flow("http://192.168.7.7/")
    f.request.headers.pop("Host", None)
    for v in values:
        f.request.headers.add("Host", v)
    run_hook(shipped, "requestheaders", f)
    assert f.response is not None and f.response.status_code == 400
    with pytest.raises(BadHost):
        request_hosts("192.168.7.7", values)


def test_every_candidate_host_is_judged(shipped: EnforcerAddon) -> None:
    # HTTP/2: :authority and a Host field that disagree; either blocked blocks.
    for authority, host in (("www.example.org", "weixin.qq.com"), ("weixin.qq.com", "www.example.org")):
        f = request_flow(f"https://{authority}/")
        f.request.http_version = "HTTP/2.0"
        f.request.authority = authority
        f.request.headers["Host"] = host
        run_hook(shipped, "requestheaders", f)
        assert _blocked(f, "wechat:domain:weixin.qq.com"), (authority, host)
    # Absolute URI against Host, both directions, and a url rule reached through the Host only.
    for url, host in (
        ("http://www.example.org/weixin/x.apk", "dldir1.qq.com"),
        ("http://dldir1.qq.com/weixin/x.apk", "www.example.org"),
        ("http://www.example.org/", "0x4d4ab105"),
    ):
        f = request_flow(url, host_header=host)
        run_hook(shipped, "requestheaders", f)
        assert f.response is not None and f.response.status_code == 403, (url, host)
    assert request_hosts("a.example", ["A.EXAMPLE.:80"], "a.example:80", ["a.example", None]) == ["a.example"]
