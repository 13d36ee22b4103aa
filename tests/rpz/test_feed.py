"""The RPZ feed of a real `enforcer dns --rpz-zone` process: AXFR content, IXFR after an edit, TSIG,
--transfer-allow, NOTIFY, monitor mode before an effective date.

The interop with real BIND and Unbound secondaries is in test_interop.py.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import socket
from datetime import UTC, datetime
from pathlib import Path

import dns.exception
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.xfr
import dns.zone
import pytest

from enforcer.policy import load_policy
from enforcer.policy.export import rpz_ip_trigger
from enforcer.rpz.feed import RpzFeed, TsigKey
from enforcer.rpz.zone import policy_records, rpz_mode
from tests.conftest import BLOCKLISTS, eventually, free_port, run_cli
from tests.dns.dnshelpers import DnsProcess

ZONE = "rpz.enforcer."
UPSTREAM = "127.0.0.1:9"  # never asked: these tests only transfer the zone


def _zone_records(z: dns.zone.Zone) -> set[tuple[str, str, str]]:
    out = set()
    for name, _ttl, rdata in z.iterate_rdatas():
        if rdata.rdtype in (dns.rdatatype.SOA, dns.rdatatype.NS):
            continue
        out.add((name.to_text(), dns.rdatatype.to_text(rdata.rdtype), rdata.to_text()))
    return out


def _expected(policy_path: Path, mode: str = "null") -> set[tuple[str, str, str]]:
    return {(r.owner, r.rtype, r.rdata) for r in policy_records(load_policy(policy_path), mode)}


def _copy_blocklists(tmp: Path, extra_names: int = 0) -> Path:
    bl = tmp / "blocklists"
    shutil.copytree(BLOCKLISTS, bl)
    if extra_names:
        # A feed large enough that a transfer spans several messages (the TSIG chain across them is tested).
        (bl / "feed.txt").write_text("".join(f"host{i}.feed-test.example\n" for i in range(extra_names)))
        wechat = bl / "wechat.yaml"
        wechat.write_text(
            wechat.read_text().replace("block:\n", "block:\n  - include: feed.txt\n    category: web\n", 1)
        )
    return bl


def _axfr(port: int, **kw: object) -> dns.zone.Zone:
    return dns.zone.from_xfr(dns.query.xfr("127.0.0.1", ZONE, port=port, lifetime=10, **kw))  # type: ignore[arg-type]


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
    # An rpz-ip trigger carries data of its own family only (Unbound rejects the other).
    assert ("21.0.176.74.77.rpz-ip", "A", "0.0.0.0") in records
    assert ("21.0.176.74.77.rpz-ip", "AAAA", "::") not in records


def test_axfr_with_tsig_spans_signed_messages(tmp_path: Path) -> None:
    bl = _copy_blocklists(tmp_path, extra_names=1500)
    key_text = "xfr-key:" + base64.b64encode(os.urandom(32)).decode()
    (tmp_path / "tsig.key").write_text(key_text + "\n")
    key = TsigKey.parse(key_text)
    proc = DnsProcess(tmp_path, "--blocklist", str(bl), "--upstream", UPSTREAM, "--rpz-zone",
                      "--tsig-key-file", str(tmp_path / "tsig.key"))  # fmt: skip
    try:
        msgs = list(dns.query.xfr("127.0.0.1", ZONE, port=proc.port, keyring=key.keyring(), keyname=key.name,
                                  lifetime=10))  # fmt: skip
        assert len(msgs) > 1, "the zone spans several signed messages"
        z = dns.zone.from_xfr(iter(msgs))
        assert _zone_records(z) == _expected(bl)
        assert ("host1499.feed-test.example", "A", "0.0.0.0") in _zone_records(z)
        # Unsigned transfers are refused when a key is configured; a wrong key too.
        with pytest.raises(dns.exception.DNSException):
            _axfr(proc.port)
        wrong = TsigKey.parse("xfr-key:" + base64.b64encode(os.urandom(32)).decode())
        with pytest.raises(dns.exception.DNSException):
            _axfr(proc.port, keyring=wrong.keyring(), keyname=wrong.name)
        assert proc.metric("enforcer_dns_queries_total", outcome="zone") >= 3
    finally:
        proc.stop()


def test_ixfr_after_an_edit_gives_the_new_zone(tmp_path: Path) -> None:
    bl = _copy_blocklists(tmp_path)
    proc = DnsProcess(tmp_path, "--blocklist", str(bl), "--upstream", UPSTREAM, "--rpz-zone", ZONE)
    try:
        z = _axfr(proc.port)
        old_serial = z.get_soa().serial
        wechat = bl / "wechat.yaml"
        text = wechat.read_text()
        text = text.replace("block:\n", "block:\n  - domain: newly-banned.example\n    category: web\n", 1)
        text = text.replace("  - domain: wxlivecdn.com\n", "  - domain: wxlivecdn-removed.example\n", 1)
        wechat.write_text(text)

        def serial_now() -> int:
            r = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=proc.port, timeout=3)
            return int(r.answer[0][0].serial)

        serial = eventually(lambda: (s := serial_now()) != old_serial and s, 10, 0.2, "the serial did not move")
        assert serial > old_serial, "the serial moves after an edit"

        msgs = list(dns.query.xfr("127.0.0.1", ZONE, rdtype=dns.rdatatype.IXFR, serial=old_serial, port=proc.port,
                                  lifetime=10))  # fmt: skip
        owners = {rrset.name.to_text() for m in msgs for rrset in m.answer}
        assert {"newly-banned.example", "*.newly-banned.example", "wxlivecdn.com"} <= owners
        assert sum(len(m.answer) for m in msgs) < 30, "an incremental transfer, not the whole zone"
        # Apply the increment with dnspython's own IXFR logic: the result equals the new policy.
        dns.query.inbound_xfr("127.0.0.1", z, query=dns.xfr.make_query(z, serial=old_serial)[0], port=proc.port,
                              lifetime=10)  # fmt: skip
        assert z.get_soa().serial == serial
        assert _zone_records(z) == _expected(bl)
        # Up to date: a single SOA.
        msgs = list(dns.query.xfr("127.0.0.1", ZONE, rdtype=dns.rdatatype.IXFR, serial=serial, port=proc.port,
                                  lifetime=10))  # fmt: skip
        assert sum(len(m.answer) for m in msgs) == 1
    finally:
        proc.stop()


def test_transfer_outside_allow_is_refused(tmp_path: Path) -> None:
    proc = DnsProcess(tmp_path, "--upstream", UPSTREAM, "--rpz-zone", "--transfer-allow", "127.0.0.1/32")
    try:
        q = dns.message.make_query(ZONE, dns.rdatatype.AXFR)
        r = dns.query.tcp(q, "127.0.0.1", timeout=5, port=proc.port, source="127.0.0.2")
        assert r.rcode() == dns.rcode.REFUSED and not r.answer
        soa = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", timeout=5, port=proc.port,
                            source="127.0.0.2")  # fmt: skip
        assert soa.rcode() == dns.rcode.REFUSED
        ok = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", timeout=5, port=proc.port)
        assert ok.rcode() == dns.rcode.NOERROR and ok.answer[0][0].serial > 0
        # The resolver itself still answers ordinary queries from that client (its own --allow applies).
        assert proc.query("weixin.qq.com").answer[0][0].to_text() == "0.0.0.0"
    finally:
        proc.stop()


def test_notify_reaches_the_secondary_on_start_and_on_change(tmp_path: Path) -> None:
    bl = _copy_blocklists(tmp_path)
    port = free_port()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(10)
    proc = DnsProcess(tmp_path, "--blocklist", str(bl), "--upstream", UPSTREAM, "--rpz-zone",
                      "--notify", f"127.0.0.1:{port}")  # fmt: skip
    try:
        serials = []
        for edit in (False, True):
            if edit:
                wechat = bl / "wechat.yaml"
                wechat.write_text(wechat.read_text().replace("block:\n", "block:\n  - host: x.example\n"
                                                             "    category: web\n", 1))  # fmt: skip
            data, addr = sock.recvfrom(4096)
            msg = dns.message.from_wire(data)
            assert msg.opcode() == dns.opcode.NOTIFY and msg.question[0].name.to_text() == ZONE
            serials.append(msg.answer[0][0].serial)
            sock.sendto(dns.message.make_response(msg).to_wire(), addr)  # acknowledge: no retries
        assert serials[1] > serials[0]
    finally:
        sock.close()
        proc.stop()


def test_apps_before_their_effective_date_are_passthru(tmp_path: Path) -> None:
    bl = _copy_blocklists(tmp_path)
    wechat = bl / "wechat.yaml"
    wechat.write_text(wechat.read_text().replace("effective: 2023-10-30", "effective: 2030-01-01", 1))
    policy = load_policy(bl)
    feed = RpzFeed(ZONE)
    feed.update(policy, at=datetime(2029, 12, 31, tzinfo=UTC), changed_at=1_700_000_000)
    actions = {(r.owner, r.rdata) for r in feed.records}
    assert ("weixin.qq.com", "rpz-passthru.") in actions
    assert ("kaspersky.com", ".") in actions
    serial = feed.serial
    # The day it takes effect, the same files block: a new serial (the effective date), so secondaries follow.
    assert feed.update(policy, at=datetime(2030, 1, 2, tzinfo=UTC), changed_at=1_700_000_000)
    assert feed.serial > serial and ("weixin.qq.com", ".") in {(r.owner, r.rdata) for r in feed.records}
    # Two workers loading the same files agree on the serial.
    other = RpzFeed(ZONE)
    other.update(policy, at=datetime(2030, 1, 2, tzinfo=UTC), changed_at=1_700_000_000)
    assert other.serial == feed.serial == int(datetime(2030, 1, 1, 5, tzinfo=UTC).timestamp())


def test_bad_rpz_flags_are_one_line_errors(tmp_path: Path) -> None:
    """Refused by the settings check before anything starts: the CLI in-process (run_cli), same output."""
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("xfr-key:not base64!!\n")
    for args, needle in (
        (["--rpz-zone", "bad..zone"], "--rpz-zone"),
        (["--rpz-zone", "--transfer-allow", "nonsense"], "--transfer-allow"),
        (["--rpz-zone", "--notify", "host.example"], "--notify"),
        (["--rpz-zone", "--tsig-key-file", str(bad_key)], "--tsig-key-file"),
    ):
        out = run_cli("dns", "--upstream", UPSTREAM, *args)
        assert out.returncode == 1, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in out.stderr, out.stderr
