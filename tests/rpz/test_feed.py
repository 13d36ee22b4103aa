"""The RPZ feed over real TCP/UDP: AXFR content, IXFR after an edit, TSIG, --transfer-allow, NOTIFY.

The interop with real BIND and Unbound secondaries is in test_interop.py.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import shutil
import socket
from pathlib import Path

import dns.exception
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.xfr
import dns.zone
import pytest

from enforcer.policy import load_policy
from enforcer.policy.export import rpz_ip_trigger
from enforcer.rpz.feed import RpzFeed, TsigKey
from enforcer.rpz.server import FeedServer
from enforcer.rpz.zone import policy_records, rpz_mode
from tests.conftest import BLOCKLISTS, free_port

ZONE = "rpz.enforcer."


def _zone_records(z: dns.zone.Zone) -> set[tuple[str, str, str]]:
    out = set()
    for name, _ttl, rdata in z.iterate_rdatas():
        if rdata.rdtype in (dns.rdatatype.SOA, dns.rdatatype.NS):
            continue
        out.add((name.to_text(), dns.rdatatype.to_text(rdata.rdtype), rdata.to_text()))
    return out


def _expected(policy_path: Path, mode: str = "nxdomain") -> set[tuple[str, str, str]]:
    return {(r.owner, r.rtype, r.rdata) for r in policy_records(load_policy(policy_path), mode)}


@pytest.fixture
def tsig() -> TsigKey:
    return TsigKey.parse("xfr-key:" + base64.b64encode(os.urandom(32)).decode())


async def _serve(feed: RpzFeed) -> tuple[FeedServer, int]:
    port = free_port()
    server = FeedServer(feed)
    await server.start("127.0.0.1", port)
    return server, port


def test_rpz_ip_trigger_formats_and_modes() -> None:
    assert rpz_ip_trigger(ipaddress.ip_network("77.74.176.0/21")) == "21.0.176.74.77.rpz-ip"
    assert rpz_ip_trigger(ipaddress.ip_network("2a03:2480:68::/48")) == "48.zz.68.2480.2a03.rpz-ip"
    assert rpz_ip_trigger(ipaddress.ip_network("2001:db8::1/128")) == "128.1.zz.db8.2001.rpz-ip"
    assert rpz_mode("refused") == "nxdomain" and rpz_mode("null") == "null"
    with pytest.raises(ValueError, match="unknown mode"):
        rpz_mode("bogus")


def test_records_follow_policy_precedence() -> None:
    records = {(r.owner, r.rtype, r.rdata) for r in policy_records(load_policy(BLOCKLISTS), "null")}
    assert ("weixin.qq.com", "A", "0.0.0.0") in records
    assert ("*.weixin.qq.com", "AAAA", "::") in records
    # The WeCom exception is a passthru at the name and below it (a longer wildcard beats *.weixin.qq.com).
    assert ("work.weixin.qq.com", "CNAME", "rpz-passthru.") in records
    assert ("*.work.weixin.qq.com", "CNAME", "rpz-passthru.") in records
    # Exact hosts under shared parents are exact triggers only.
    assert ("mmbiz.qpic.cn", "A", "0.0.0.0") in records
    assert not any(owner == "*.mmbiz.qpic.cn" for owner, _, _ in records)
    assert not any(owner in ("qq.com", "*.qq.com", "qpic.cn", "*.qpic.cn") for owner, _, _ in records)
    assert ("21.0.176.74.77.rpz-ip", "A", "0.0.0.0") in records


async def test_axfr_serves_the_policy_with_tsig(tsig: TsigKey) -> None:
    feed = RpzFeed(ZONE, tsig=tsig)
    feed.records_per_message = 50  # several messages: the TSIG chain across them is what is tested
    feed.update(load_policy(BLOCKLISTS))
    server, port = await _serve(feed)
    try:
        msgs = await asyncio.to_thread(
            lambda: list(
                dns.query.xfr("127.0.0.1", ZONE, port=port, keyring=feed.keyring, keyname=tsig.name, lifetime=10)
            )
        )
        assert len(msgs) > 1, "a policy this size spans several signed messages"
        z = dns.zone.from_xfr(iter(msgs))
        assert z.get_soa().serial == feed.serial
        assert _zone_records(z) == _expected(BLOCKLISTS)

        # Unsigned transfers are refused when a key is configured.
        with pytest.raises(dns.exception.DNSException):
            await asyncio.to_thread(lambda: list(dns.query.xfr("127.0.0.1", ZONE, port=port, lifetime=5)))
        # A wrong key is refused too.
        wrong = TsigKey.parse("xfr-key:" + base64.b64encode(os.urandom(32)).decode())
        with pytest.raises(dns.exception.DNSException):
            await asyncio.to_thread(
                lambda: list(
                    dns.query.xfr("127.0.0.1", ZONE, port=port, keyring=wrong.keyring(), keyname=wrong.name, lifetime=5)
                )
            )
    finally:
        await server.close()


async def test_ixfr_after_an_edit_gives_the_new_zone(tmp_path: Path) -> None:
    bl = tmp_path / "bl"
    shutil.copytree(BLOCKLISTS, bl)
    feed = RpzFeed(ZONE)
    feed.update(load_policy(bl))
    server, port = await _serve(feed)
    try:
        z = await asyncio.to_thread(lambda: dns.zone.from_xfr(dns.query.xfr("127.0.0.1", ZONE, port=port, lifetime=10)))
        old_serial = feed.serial
        wechat = bl / "wechat.yaml"
        text = wechat.read_text()
        text = text.replace("block:\n", "block:\n  - domain: newly-banned.example\n    category: web\n", 1)
        text = text.replace("  - domain: wxlivecdn.com\n", "  - domain: wxlivecdn-removed.example\n", 1)
        wechat.write_text(text)
        assert feed.update(load_policy(bl))
        assert feed.serial > old_serial
        assert not feed.update(load_policy(bl)), "no change, no serial bump"

        def ixfr() -> list[dns.message.Message]:
            return list(
                dns.query.xfr("127.0.0.1", ZONE, rdtype=dns.rdatatype.IXFR, serial=old_serial, port=port, lifetime=10)
            )

        msgs = await asyncio.to_thread(ixfr)
        answer = [rrset for m in msgs for rrset in m.answer]
        owners = {rrset.name.to_text() for rrset in answer}
        assert {"newly-banned.example", "*.newly-banned.example", "wxlivecdn.com"} <= owners
        assert len(answer) < 20, "an incremental transfer, not the whole zone"
        # Apply the increment with dnspython's own IXFR logic and compare with the policy.
        await asyncio.to_thread(
            lambda: dns.query.inbound_xfr(
                "127.0.0.1", z, query=dns.xfr.make_query(z, serial=old_serial)[0], port=port, lifetime=10
            )
        )
        assert z.get_soa().serial == feed.serial
        assert _zone_records(z) == _expected(bl)
        # Up to date: a single SOA.
        msgs = await asyncio.to_thread(
            lambda: list(
                dns.query.xfr("127.0.0.1", ZONE, rdtype=dns.rdatatype.IXFR, serial=feed.serial, port=port, lifetime=10)
            )
        )
        assert sum(len(m.answer) for m in msgs) == 1
    finally:
        await server.close()


async def test_transfer_outside_allow_is_refused() -> None:
    feed = RpzFeed(ZONE, transfer_allow=[ipaddress.ip_network("127.0.0.1/32")])
    feed.update(load_policy(BLOCKLISTS))
    server, port = await _serve(feed)
    try:
        q = dns.message.make_query(ZONE, dns.rdatatype.AXFR)
        r = await asyncio.to_thread(dns.query.tcp, q, "127.0.0.1", timeout=5, port=port, source="127.0.0.2")
        assert r.rcode() == dns.rcode.REFUSED and not r.answer
        soa = await asyncio.to_thread(
            dns.query.udp, dns.message.make_query(ZONE, "SOA"), "127.0.0.1", timeout=5, port=port, source="127.0.0.2"
        )
        assert soa.rcode() == dns.rcode.REFUSED
        ok = await asyncio.to_thread(
            dns.query.udp, dns.message.make_query(ZONE, "SOA"), "127.0.0.1", timeout=5, port=port
        )
        assert ok.rcode() == dns.rcode.NOERROR and ok.answer[0][0].serial == feed.serial
    finally:
        await server.close()


async def test_notify_reaches_the_secondary() -> None:
    port = free_port()
    received: list[dns.message.Message] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()

    async def secondary() -> None:
        data, addr = await loop.sock_recvfrom(sock, 4096)
        msg = dns.message.from_wire(data)
        received.append(msg)
        reply = dns.message.make_response(msg)
        await loop.sock_sendto(sock, reply.to_wire(), addr)

    feed = RpzFeed(ZONE, notify=[("127.0.0.1", port)])
    feed.update(load_policy(BLOCKLISTS))
    try:
        await asyncio.wait_for(asyncio.gather(secondary(), feed.notify_all()), 10)
    finally:
        sock.close()
    assert received and received[0].opcode() == dns.opcode.NOTIFY
    assert received[0].answer[0][0].serial == feed.serial


def test_apps_before_their_effective_date_are_passthru(tmp_path: Path) -> None:
    bl = tmp_path / "bl"
    shutil.copytree(BLOCKLISTS, bl)
    wechat = bl / "wechat.yaml"
    wechat.write_text(wechat.read_text().replace("effective: 2023-10-30", "effective: 2030-01-01", 1))
    policy = load_policy(bl)
    feed = RpzFeed(ZONE)
    from datetime import UTC, datetime

    feed.update(policy, at=datetime(2029, 12, 31, tzinfo=UTC))
    actions = {(r.owner, r.rdata) for r in feed.records}
    assert ("weixin.qq.com", "rpz-passthru.") in actions
    assert ("kaspersky.com", ".") in actions
    serial = feed.serial
    # The day it takes effect, the same policy blocks: a new serial, so secondaries follow.
    assert feed.update(policy, at=datetime(2030, 1, 2, tzinfo=UTC))
    assert feed.serial > serial and ("weixin.qq.com", ".") in {(r.owner, r.rdata) for r in feed.records}
