"""Unit tests of the addon through mitmproxy's own harness (``taddons.context``, ``tflow``), no sockets except /metrics.

- The shared match table (tests/data/match_cases.yaml) runs through the hooks: domain cases as CONNECT, as a Host
  of a plain request and as the SNI of a real ClientHello; url cases as requests with their method; ip cases as
  CONNECT to the literal and as a server connection to it.
- Block page, monitor mode, fail closed, skipping answered flows, options validation, reload, metrics, events, DNS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from mitmproxy import dns, exceptions, http
from mitmproxy.net.dns import response_codes, types
from mitmproxy.test import taddons
from prometheus_client.parser import text_string_to_metric_families

from enforcer.events import iter_events
from enforcer.policy import load_policy
from enforcer.proxy.addon import EnforcerAddon
from tests.conftest import BLOCKLISTS, DATA, eventually, free_port
from tests.proxy.helpers import (
    client_hello_data,
    connect_flow,
    dns_flow,
    gate,
    harness,
    request_flow,
    run_hook,
    server_hook_data,
    tunnel_response,
    write_policy,
)

CASES: list[dict[str, Any]] = yaml.safe_load((DATA / "match_cases.yaml").read_text(encoding="utf-8"))
# market:// is an Android intent, never an HTTP request a proxy can see: those two url cases belong to the matcher.
HTTP_URL_CASES = [c for c in CASES if c["kind"] == "url" and c["query"].split("://")[0] in ("http", "https")]
DOMAIN_CASES = [c for c in CASES if c["kind"] == "domain"]
IP_CASES = [c for c in CASES if c["kind"] == "ip"]


def _id(case: dict[str, Any]) -> str:
    return f"{case.get('method', '')}{case['query']}"[:80]


def _shipped_addon() -> Any:
    a = EnforcerAddon()
    with harness(a) as tctx:
        tctx.configure(a, enforcer_blocklist=str(BLOCKLISTS))
        yield a
    run_hook(a, "done")


# The table runs ~1200 cases against one addon (the hooks keep no state for these flows); tests that change the
# addon get their own.
table_addon = pytest.fixture(scope="module")(_shipped_addon)
addon = pytest.fixture(_shipped_addon)


def configured(tctx: taddons.context, folder: Path, **options: Any) -> EnforcerAddon:
    a = EnforcerAddon()
    tctx.master.addons.add(a)
    tctx.configure(a, enforcer_blocklist=str(folder), **options)
    return a


def expect_block(response: http.Response | None, case: dict[str, Any]) -> None:
    assert response is not None, f"not blocked: {case}"
    assert response.status_code == 403
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    if case.get("rule"):
        assert response.headers["X-Enforcer-Rule"] == case["rule"], case


def count(addon: EnforcerAddon, name: str, **labels: str) -> float:
    return addon.registry.get_sample_value(name, labels) or 0.0


# -- the shared table --------------------------------------------------------------------------------------------
def test_table_is_loaded() -> None:
    assert len(HTTP_URL_CASES) > 100 and len(DOMAIN_CASES) > 200 and len(IP_CASES) > 20


@pytest.fixture
def blocked_connect(table_addon: EnforcerAddon, request: pytest.FixtureRequest) -> Any:
    """Runs a table test in one ``enforcer_blocked_connect`` mode (the runtime's value; the option sets it)."""
    table_addon.runtime.blocked_connect = request.param
    yield request.param
    table_addon.runtime.blocked_connect = "page"


# The whole table in the default mode (page) by default; in refuse mode too under -m slow (327 more cases; refuse on
# a blocked CONNECT stays in the default run through test_e2e_blockpage.py's real mitmdump).
@pytest.mark.parametrize("blocked_connect", ["page", pytest.param("refuse", marks=pytest.mark.slow)], indirect=True)
@pytest.mark.parametrize("case", DOMAIN_CASES, ids=_id)
def test_domain_case_as_connect(table_addon: EnforcerAddon, case: dict[str, Any], blocked_connect: str) -> None:
    f = connect_flow(case["query"])
    run_hook(table_addon, "http_connect", f)
    if case["verdict"] == "block":
        # page: accepted (no answer on the CONNECT), the first request inside gets the page; refuse: 403 at once.
        assert (f.response is None) is (blocked_connect == "page"), case
        expect_block(tunnel_response(table_addon, f), case)
        assert f.metadata["enforcer"]["rule"] == case.get("rule", f.metadata["enforcer"]["rule"])
    else:
        assert f.response is None and "page" not in f.metadata.get("enforcer", {}), case
    run_hook(table_addon, "client_disconnected", f.client_conn)


@pytest.mark.parametrize("case", DOMAIN_CASES, ids=_id)
def test_domain_case_as_host_header(table_addon: EnforcerAddon, case: dict[str, Any]) -> None:
    # An origin-form request whose destination is innocent but whose Host header names the case: the Host counts.
    f = request_flow("http://192.168.7.7/", host_header=case["query"])
    run_hook(table_addon, "requestheaders", f)
    if case["verdict"] == "block":
        # Same verdict and app; the rule may be a more specific url rule of that app (e.g. *.upd.kaspersky.com/*).
        expect_block(f.response, {**case, "rule": None})
        assert f.metadata["enforcer"]["app"] == case["app"]
    else:
        assert f.response is None, case


@pytest.mark.parametrize("case", [c for c in DOMAIN_CASES if c["query"].isascii()], ids=_id)
def test_domain_case_as_sni(table_addon: EnforcerAddon, case: dict[str, Any]) -> None:
    sni = case["query"].rstrip(".")
    data = client_hello_data(sni)
    run_hook(table_addon, "tls_clienthello", data)
    hook = server_hook_data(("10.9.9.9", 443))
    hook.client = data.context.client
    gate(table_addon, hook)
    if case["verdict"] == "block":
        # Never decrypted, and the upstream side is refused by the gate.
        assert data.ignore_connection
        assert hook.server.error and case.get("rule", "") in hook.server.error
    else:
        assert hook.server.error is None, case
        # Decrypted only when a url/store rule needs the HTTP request.
        assert data.ignore_connection is not table_addon.policy().has_url_rules(sni)


@pytest.mark.parametrize("case", HTTP_URL_CASES, ids=_id)
def test_url_case_as_request(table_addon: EnforcerAddon, case: dict[str, Any]) -> None:
    f = request_flow(case["query"], case.get("method", "GET"))
    run_hook(table_addon, "requestheaders", f)
    if case["verdict"] == "block":
        expect_block(f.response, case)
        assert f.metadata["enforcer"]["app"] == case["app"]
    else:
        assert f.response is None, case


@pytest.mark.parametrize("blocked_connect", ["page", "refuse"], indirect=True)
@pytest.mark.parametrize("case", IP_CASES, ids=_id)
def test_ip_case_as_connect_and_server_connect(
    table_addon: EnforcerAddon, case: dict[str, Any], blocked_connect: str
) -> None:
    f = connect_flow(case["query"])
    run_hook(table_addon, "http_connect", f)
    hook = gate(table_addon, server_hook_data((case["query"], 443)))
    # The server connection of the CONNECT's own tunnel is refused by the connection state, whatever it names.
    own = server_hook_data(("10.9.9.9", 443))
    own.client = f.client_conn
    gate(table_addon, own)
    if case["verdict"] == "block":
        expect_block(tunnel_response(table_addon, f), case)
        assert hook.server.error and case.get("rule", "") in hook.server.error
        assert (own.server.error is not None) is (blocked_connect == "page"), case
    else:
        assert f.response is None and hook.server.error is None and own.server.error is None, case
    run_hook(table_addon, "client_disconnected", f.client_conn)


# -- behaviour beyond the table ----------------------------------------------------------------------------------
def test_block_page_names_app_rule_notice_reference(addon: EnforcerAddon) -> None:
    f = request_flow("http://dldir1.qq.com/weixin/android/x.apk")
    run_hook(addon, "requestheaders", f)
    assert f.response is not None
    body = f.response.get_text()
    app = addon.policy().apps["wechat"]
    assert "WeChat (Weixin, 微信)" in body and "wechat:url:dldir1.qq.com/weixin/*" in body
    assert app.notice[:40] in body and "Treasury Board of Canada Secretariat" in body


def test_block_page_escapes_everything(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        name="<script>alert('n')</script>",
        notice="<script>alert(1)</script> & <img src=x onerror=alert(2)>",
        rule_id="testapp:<script>x</script>",
    )
    with harness() as tctx:
        a = configured(tctx, tmp_path)
        f = request_flow("http://blocked.test/<script>alert(3)</script>")
        run_hook(a, "requestheaders", f)
        assert f.response is not None
        body = f.response.get_text()
        assert "<script>" not in body and "<img" not in body and "<b>" not in body
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;img" in body
        assert "testapp:&lt;script&gt;x&lt;/script&gt;" in body and "Directive &lt;b&gt;42&lt;/b&gt; &amp; co" in body
        assert f.response.headers["X-Enforcer-Rule"] == "testapp:<script>x</script>"
        run_hook(a, "done")


def test_shared_host_other_paths_pass(addon: EnforcerAddon) -> None:
    for url, blocked in (
        ("https://dldir1.qq.com/weixin/Windows/WeChatSetup.exe", True),
        ("https://dldir1.qq.com/qqfile/qq/QQNT/Windows/QQ_x64.exe", False),
        ("https://play.google.com/store/apps/details?gl=US&ID=com.tencent.mm&hl=en", True),
        ("https://play.google.com/store/apps/details?gl=US&id=COM.TENCENT.MM&hl=en", True),
        ("https://play.google.com/store/apps/details?id=com.tencent.mobileqq", False),
    ):
        f = request_flow(url)
        run_hook(addon, "requestheaders", f)
        assert (f.response is not None) is blocked, url


def test_mmtls_shortlink_post_only(addon: EnforcerAddon) -> None:
    post = request_flow("http://203.0.113.9/mmtls/0a1b2c3d", "POST")
    get = request_flow("http://203.0.113.9/mmtls/0a1b2c3d", "GET")
    run_hook(addon, "requestheaders", post)
    run_hook(addon, "requestheaders", get)
    assert post.response is not None and post.response.headers["X-Enforcer-Rule"] == "wechat:url:mmtls-shortlink"
    assert get.response is None


def test_absolute_url_and_host_header_both_count(addon: EnforcerAddon) -> None:
    # The destination is blocked, the Host header innocent (and the other way round): both are refused.
    f1 = request_flow("http://weixin.qq.com/", host_header="www.example.org")
    f2 = request_flow("http://www.example.org/", host_header="weixin.qq.com")
    for f in (f1, f2):
        run_hook(addon, "requestheaders", f)
        assert f.response is not None and f.response.status_code == 403


def test_websocket_upgrade_is_blocked(addon: EnforcerAddon) -> None:
    f = request_flow("http://wx.qq.com/ws")
    f.request.headers.update({"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"})
    run_hook(addon, "requestheaders", f)
    assert f.response is not None and f.response.status_code == 403


def test_http2_request_uses_authority(addon: EnforcerAddon) -> None:
    f = request_flow("https://dldir1.qq.com/weixin/x.apk")
    f.request.http_version = "HTTP/2.0"
    f.request.authority = "dldir1.qq.com"
    run_hook(addon, "requestheaders", f)
    assert f.response is not None and f.response.status_code == 403


def test_answered_flows_are_left_alone(addon: EnforcerAddon) -> None:
    f = request_flow("http://weixin.qq.com/")
    f.response = http.Response.make(204)
    run_hook(addon, "requestheaders", f)
    assert f.response.status_code == 204 and "enforcer" not in f.metadata
    c = connect_flow("weixin.qq.com")
    c.response = http.Response.make(407)
    run_hook(addon, "http_connect", c)
    assert c.response.status_code == 407


def test_sni_with_url_rules_is_intercepted_other_hosts_pass_through(addon: EnforcerAddon) -> None:
    for sni, intercept in (("dldir1.qq.com", True), ("play.google.com", True), ("www.example.org", False)):
        data = client_hello_data(sni)
        run_hook(addon, "tls_clienthello", data)
        assert data.ignore_connection is not intercept, sni
    # Without an SNI the CONNECT host decides.
    for host, intercept in (("dldir1.qq.com", True), ("www.example.org", False)):
        data = client_hello_data(None, (host, 443))
        run_hook(addon, "tls_clienthello", data)
        assert data.ignore_connection is not intercept, host


def test_transparent_mode_blocked_ip_with_innocent_sni(addon: EnforcerAddon) -> None:
    data = client_hello_data("www.example.org", ("129.226.3.47", 443))
    run_hook(addon, "tls_clienthello", data)
    assert data.ignore_connection and data.context.server.error


def test_server_connect_gate_sni_and_address(addon: EnforcerAddon) -> None:
    by_sni = server_hook_data(("10.9.9.9", 443), sni="sgshort.wechat.com")
    by_name = server_hook_data(("weixin.qq.com", 80))
    fine = server_hook_data(("10.9.9.9", 443), sni="dldir1.qq.com")
    for d in (by_sni, by_name, fine):
        gate(addon, d)
    assert by_sni.server.error and "wechat:domain:wechat.com" in by_sni.server.error
    assert by_name.server.error and "wechat:domain:weixin.qq.com" in by_name.server.error
    assert fine.server.error is None


def test_dns_mode_sinkholes(addon: EnforcerAddon) -> None:
    a = dns_flow("long.weixin.qq.com", types.A)
    aaaa = dns_flow("long.weixin.qq.com", types.AAAA)
    txt = dns_flow("long.weixin.qq.com", types.TXT)
    ok = dns_flow("www.qq.com", types.A)
    for f in (a, aaaa, txt, ok):
        run_hook(addon, "dns_request", f)
    assert a.response is not None and str(a.response.answers[0].ipv4_address) == "0.0.0.0"
    assert aaaa.response is not None and str(aaaa.response.answers[0].ipv6_address) == "::"
    assert txt.response is not None and txt.response.answers == []
    assert txt.response.response_code == response_codes.NOERROR
    assert ok.response is None


def test_dns_mode_replaces_the_resolvers_answer(addon: EnforcerAddon) -> None:
    # mitmproxy's DnsResolver runs before script addons: its real answer must not survive for a blocked name.
    f = dns_flow("weixin.qq.com", types.A)
    f.response = f.request.succeed([dns.ResourceRecord.A("weixin.qq.com", ipaddress.IPv4Address("203.205.219.1"))])
    ok = dns_flow("www.qq.com", types.A)
    ok.response = ok.request.succeed([dns.ResourceRecord.A("www.qq.com", ipaddress.IPv4Address("192.0.2.9"))])
    run_hook(addon, "dns_request", f)
    run_hook(addon, "dns_request", ok)
    assert [str(a.ipv4_address) for a in f.response.answers] == ["0.0.0.0"]
    assert [str(a.ipv4_address) for a in ok.response.answers] == ["192.0.2.9"]


def test_dns_mode_judges_the_answer_of_an_allowed_name(addon: EnforcerAddon) -> None:
    """As the resolver's response policy does: an allowed name whose answer is an address in a blocked range, or an
    alias of a blocked name, gets the sinkhole answer (DNS mode's answers were never looked at)."""

    def answered(name: str, *records: dns.ResourceRecord) -> dns.DNSFlow:
        f = dns_flow(name, types.A)
        f.response = f.request.succeed(list(records))
        run_hook(addon, "dns_request", f)
        if f.response is not None:
            run_hook(addon, "dns_response", f)
        return f

    v4 = ipaddress.IPv4Address
    into_range = answered("updates.example", dns.ResourceRecord.A("updates.example", v4("77.74.177.5")))
    alias = answered(
        "cdn.example",
        dns.ResourceRecord.CNAME("cdn.example", "long.weixin.qq.com"),
        dns.ResourceRecord.A("long.weixin.qq.com", v4("192.0.2.7")),
    )
    clean = answered("www.example", dns.ResourceRecord.A("www.example", v4("192.0.2.9")))
    # The WeCom exception keeps its alias under weixin.qq.com (as in the resolver), not a banned address.
    wecom = answered(
        "work.weixin.qq.com",
        dns.ResourceRecord.CNAME("work.weixin.qq.com", "x.weixin.qq.com"),
        dns.ResourceRecord.A("x.weixin.qq.com", v4("192.0.2.8")),
    )
    wecom_banned = answered("work.weixin.qq.com", dns.ResourceRecord.A("work.weixin.qq.com", v4("77.74.177.5")))
    for f in (into_range, alias, wecom_banned):
        assert f.response is not None and [str(a.ipv4_address) for a in f.response.answers] == ["0.0.0.0"], f
        assert f.metadata["enforcer"]["action"] == "dns-response-block"
    assert into_range.metadata["enforcer"]["rule"].startswith("kaspersky:cidr:")
    assert alias.metadata["enforcer"]["rule"] == "wechat:domain:weixin.qq.com"
    assert [str(a.ipv4_address) for a in clean.response.answers] == ["192.0.2.9"]
    assert [r.name for r in wecom.response.answers] == ["work.weixin.qq.com", "x.weixin.qq.com"]


# -- monitor mode ------------------------------------------------------------------------------------------------
async def test_monitor_mode_before_effective_date(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_policy(tmp_path / "bl", effective="2999-01-01")
    with harness() as tctx:
        a = configured(tctx, tmp_path / "bl", enforcer_events=str(events))
        c = connect_flow("x.blocked.test")
        r = request_flow("http://shared.test/app/setup.exe")
        run_hook(a, "http_connect", c)
        run_hook(a, "requestheaders", r)
        assert c.response is None and r.response is None
        assert c.metadata["enforcer"]["outcome"] == "monitored" and c.metadata["enforcer"]["enforced"] is False
        assert (
            count(
                a,
                "enforcer_monitored_total",
                component="proxy",
                app="testapp",
                category="download",
                action="http-block",
            )
            == 1
        )
        assert count(a, "enforcer_proxy_flows_total", outcome="monitored") == 2
        assert (
            count(
                a,
                "enforcer_blocked_total",
                component="proxy",
                app="testapp",
                category="messaging",
                action="connect-block",
            )
            == 0
        )
        run_hook(a, "done")
    docs = list(iter_events(events))
    assert [d["event"]["type"] for d in docs] == [["allowed"], ["allowed"]]
    assert {d["event"]["action"] for d in docs} == {"connect-block", "http-block"}


async def test_monitor_mode_for_exempt_client(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    write_policy(tmp_path / "bl", exempt="[10.99.0.0/24]")
    with harness() as tctx:
        a = configured(tctx, tmp_path / "bl", enforcer_events=str(events))
        exempt = connect_flow("blocked.test", peer="10.99.0.7")
        other = connect_flow("blocked.test", peer="10.98.0.7")
        run_hook(a, "http_connect", exempt)
        run_hook(a, "http_connect", other)
        assert exempt.response is None and tunnel_response(a, exempt) is None
        response = tunnel_response(a, other)
        assert response is not None and response.status_code == 403
        run_hook(a, "done")
    docs = {d["source"]["ip"]: d for d in iter_events(events)}
    assert docs["10.99.0.7"]["event"]["type"] == ["allowed"] and docs["10.99.0.7"]["labels"] == {"exempt": True}
    assert docs["10.98.0.7"]["event"]["type"] == ["denied"]


# -- fail closed -------------------------------------------------------------------------------------------------
class ExplodingPolicy:
    fingerprint = "boom"

    def __getattr__(self, name: str) -> Any:
        def explode(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"policy.{name} exploded")

        return explode


def test_exception_in_policy_blocks_every_hook(addon: EnforcerAddon, caplog: pytest.LogCaptureFixture) -> None:
    assert addon.holder is not None
    addon.holder.policy = ExplodingPolicy()  # type: ignore[assignment]
    c = connect_flow("www.example.org")
    r = request_flow("http://www.example.org/")
    hello = client_hello_data("www.example.org")
    hook = server_hook_data(("www.example.org", 443))
    d = dns_flow("www.example.org")
    with caplog.at_level(logging.ERROR, "enforcer.proxy"):
        run_hook(addon, "http_connect", c)
        run_hook(addon, "requestheaders", r)
        run_hook(addon, "tls_clienthello", hello)
        gate(addon, hook)
        run_hook(addon, "dns_request", d)
    for f in (c, r):
        assert f.response is not None and f.response.status_code == 403
        assert f.response.headers["X-Enforcer-Rule"] == "enforcer:error"
    assert hello.ignore_connection and hello.context.server.error
    assert hook.server.error
    assert d.response is not None and d.response.response_code == response_codes.REFUSED
    assert count(addon, "enforcer_proxy_flows_total", outcome="error") == 5
    assert "fail closed" in caplog.text  # reported once, then rate-limited


def test_refused_tls_connection_stays_refused_at_the_gate(addon: EnforcerAddon) -> None:
    hello = client_hello_data("weixin.qq.com", ("127.0.0.1", 8443))
    run_hook(addon, "tls_clienthello", hello)
    # Upstream mode: the server opened is the upstream proxy, whose address says nothing; the state refuses it.
    hook = server_hook_data(("127.0.0.1", 3128))
    hook.client = hello.context.client
    gate(addon, hook)
    assert hook.server.error
    run_hook(addon, "client_disconnected", hello.context.client)
    assert hello.context.client.id not in addon.runtime.conns


# -- options -----------------------------------------------------------------------------------------------------
def test_options_are_validated(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.yaml").write_text("app: bad\npolicy:\n  effective: 2023-10-30\nblock:\n  - domain: 'a b'\n")
    with harness() as tctx:
        a = configured(tctx, BLOCKLISTS)
        good = a.holder
        assert good is not None
        with pytest.raises(exceptions.OptionsError, match="no such file or directory"):
            tctx.configure(a, enforcer_blocklist=str(tmp_path / "missing"))
        with pytest.raises(exceptions.OptionsError, match=r"bad\.yaml:5:\d+:"):
            tctx.configure(a, enforcer_blocklist=str(broken))
        # mitmproxy rolls a rejected option back (configure runs again with the old value): same policy.
        assert a.holder is not None and a.holder.policy.fingerprint == good.policy.fingerprint
        for bad in ("nonsense", "127.0.0.1:99999", "[::1"):
            with pytest.raises(exceptions.OptionsError, match="enforcer_metrics"):
                tctx.configure(a, enforcer_metrics=bad)
        with pytest.raises(exceptions.OptionsError, match="is a folder, expected a file path"):
            tctx.configure(a, enforcer_events=str(tmp_path))
        run_hook(a, "done")


def test_eager_connection_strategy_warns(caplog: pytest.LogCaptureFixture) -> None:
    with harness() as tctx, caplog.at_level(logging.WARNING, "enforcer.proxy"):
        # connection_strategy belongs to mitmproxy's proxyserver addon, which the harness does not load.
        tctx.options.add_option("connection_strategy", str, "lazy", "as in mitmproxy.addons.proxyserver")
        a = configured(tctx, BLOCKLISTS)
        tctx.configure(a, connection_strategy="eager")
        assert "connection_strategy=eager" in caplog.text
        caplog.clear()
        tctx.configure(a, connection_strategy="lazy")
        assert "connection_strategy=eager" not in caplog.text
        run_hook(a, "done")


# -- reload ------------------------------------------------------------------------------------------------------
async def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    # eventually() sleeps: polled from a worker thread, so the watch task keeps running on this loop meanwhile.
    return bool(await asyncio.to_thread(eventually, predicate, timeout, 0.05))


async def test_reload_on_edit_keeps_last_good_policy(tmp_path: Path) -> None:
    path = write_policy(tmp_path)
    with harness() as tctx:
        a = configured(tctx, tmp_path)
        run_hook(a, "running")
        assert a.lifecycle.watch_task is not None
        f = connect_flow("newly.test")
        run_hook(a, "http_connect", f)
        assert f.response is None
        path.write_text(path.read_text() + "  - domain: newly.test\n    category: web\n")
        assert await wait_for(lambda: a.policy().match_host("newly.test") is not None)
        good = a.policy().fingerprint
        path.write_text(path.read_text() + "  - domain: [broken\n")
        assert await wait_for(lambda: count(a, "enforcer_policy_reloads_total", result="failure") >= 1)
        assert a.policy().fingerprint == good
        f = connect_flow("newly.test")
        run_hook(a, "http_connect", f)
        response = tunnel_response(a, f)
        assert response is not None and response.status_code == 403
        task = a.lifecycle.watch_task
        run_hook(a, "done")
        await asyncio.sleep(0)
        assert task.cancelled() or task.done()


# -- metrics and events ------------------------------------------------------------------------------------------
def scrape(port: int) -> dict[str, list[Any]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {fam.name: fam.samples for fam in text_string_to_metric_families(text)}


async def test_metrics_endpoint_survives_script_reload(tmp_path: Path) -> None:
    port = free_port()
    with harness() as tctx:
        a = configured(tctx, BLOCKLISTS, enforcer_metrics=f"127.0.0.1:{port}")
        f = connect_flow("weixin.qq.com")
        run_hook(a, "http_connect", f)
        assert tunnel_response(a, f) is not None  # the page mode records the hit at the first request
        families = await asyncio.to_thread(scrape, port)
        blocked = [s for s in families["enforcer_blocked"] if s.name == "enforcer_blocked_total"]
        assert (
            blocked[0].labels
            == {"component": "proxy", "app": "wechat", "category": "messaging", "action": "connect-block"}
            and blocked[0].value == 1
        )
        assert "enforcer_policy_rules" in families and "enforcer_events_written" in families
        # mitmproxy's live reload: done() on the old instance, a new instance configured on the same port.
        tctx.master.addons.remove(a)
        b = configured(tctx, BLOCKLISTS, enforcer_metrics=f"127.0.0.1:{port}")
        families = await asyncio.to_thread(scrape, port)
        assert not [s for s in families["enforcer_blocked"] if s.name == "enforcer_blocked_total"]
        run_hook(b, "done")


async def test_events_are_ecs(tmp_path: Path) -> None:
    events = tmp_path / "ev" / "events.jsonl"
    with harness() as tctx:
        a = configured(tctx, BLOCKLISTS, enforcer_events=str(events))
        run_hook(a, "requestheaders", request_flow("http://dldir1.qq.com/weixin/x.apk?v=1", peer="10.7.7.7"))
        c = connect_flow("129.226.3.47", 443, peer="10.7.7.8")
        run_hook(a, "http_connect", c)
        assert tunnel_response(a, c, "/x") is not None
        hello = client_hello_data("sgshort.wechat.com", ("10.9.9.9", 443), peer="10.7.7.9")
        run_hook(a, "tls_clienthello", hello)
        run_hook(a, "done")
    docs = list(iter_events(events))
    assert [d["event"]["action"] for d in docs] == ["http-block", "connect-block", "tls-block"]
    http_ev, conn_ev, tls_ev = docs
    for d in docs:
        assert d["event"]["dataset"] == "enforcer.proxy" and d["observer"]["type"] == "proxy"
        assert d["event"]["type"] == ["denied"] and d["rule"]["ruleset"] == "wechat"
    assert http_ev["url"] == {"full": "http://dldir1.qq.com/weixin/x.apk?v=1", "domain": "dldir1.qq.com"}
    assert http_ev["http"]["request"]["method"] == "GET" and http_ev["source"] == {"ip": "10.7.7.7", "port": 50001}
    assert http_ev["rule"]["id"] == "wechat:url:dldir1.qq.com/weixin/*"
    assert http_ev["rule"]["reference"].startswith(str(BLOCKLISTS / "wechat.yaml") + ":")
    assert conn_ev["destination"] == {"ip": "129.226.3.47", "port": 443}
    assert conn_ev["url"] == {"full": "https://129.226.3.47/x", "domain": "129.226.3.47"}  # the page's request
    assert tls_ev["tls"]["client"]["server_name"] == "sgshort.wechat.com"


def test_blocklist_path_with_a_comma_and_comma_separated_lists(tmp_path: Path) -> None:
    odd = tmp_path / "lists, site A"
    shutil.copytree(BLOCKLISTS, odd)
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "local.yaml").write_text(
        "app: local\npolicy:\n  effective: 2023-10-30\nblock:\n  - domain: banned.example\n    category: web\n"
    )
    with harness() as tctx:
        a = configured(tctx, odd)
        shipped = set(load_policy([BLOCKLISTS]).apps)  # wechat, kaspersky and whatever else ships
        assert a.holder is not None and set(a.holder.policy.apps) == shipped and {"wechat", "kaspersky"} <= shipped
        tctx.configure(a, enforcer_blocklist=f"{BLOCKLISTS},{extra}")
        assert set(a.holder.policy.apps) == shipped | {"local"}
        run_hook(a, "done")


def test_event_counters_follow_the_current_writer(tmp_path: Path) -> None:
    # The writer is replaced on every enforcer_events change; /metrics must show the counters of the one in use.
    def written(a: EnforcerAddon) -> float:
        return count(a, "enforcer_events_written_total")

    with harness() as tctx:
        a = configured(tctx, BLOCKLISTS)
        tctx.configure(a, enforcer_blocked_connect="refuse")  # one CONNECT, one event at once
        run_hook(a, "http_connect", connect_flow("weixin.qq.com"))
        assert written(a) == 0 and count(a, "enforcer_events_queued") == 0  # no file: nothing written, nothing queued
        for i, n in ((1, 2), (2, 1)):
            tctx.configure(a, enforcer_events=str(tmp_path / f"events{i}.jsonl"))
            for _ in range(n):
                run_hook(a, "http_connect", connect_flow("weixin.qq.com"))
            a.runtime.writer.flush()
            assert written(a) == n, i
        tctx.configure(a, enforcer_events="")
        assert written(a) == 0
        run_hook(a, "done")
    assert len(list(iter_events(tmp_path / "events1.jsonl"))) == 2
    assert len(list(iter_events(tmp_path / "events2.jsonl"))) == 1
