"""Event generation for the analyst tests, plus the *independent* expected figures.

Events are real ``HitEvent`` objects built from real policy matches (``Policy.match_name``/``match_url``) and written
by the real ``EventWriter``, so the analyst reads exactly what the resolver and proxy write. The expected figures are
computed here from the ``HitEvent`` objects themselves (with ``ipaddress`` brute force for the inventory), not with
any analyst code.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enforcer.analyst.web import Analyst, AnalystSettings
from enforcer.events import EventWriter, HitEvent
from enforcer.policy import Policy, load_policy
from tests.conftest import BLOCKLISTS

HOSTILE = "<img src=x onerror=alert(1)>.weixin.qq.com"

# Clients: IPv4 in nested inventory ranges, IPv4 outside any range, IPv6 in nested ranges, an exempt lab range.
CLIENTS = [
    "10.1.2.7",  # /32 inside /24 inside /16
    "10.1.2.8",  # /24 inside /16
    "10.1.9.1",  # /16 only
    "10.20.0.5",  # no inventory row
    "2001:db8:1:2::10",  # /64 inside /48
    "2001:db8:1:3::20",  # /48 only
    "2001:db8:ffff::1",  # no row
    "10.99.0.4",  # "exempt": monitor events only
]
INVENTORY_CSV = """cidr,device,owner,unit
10.1.0.0/16,pool-hq,IT pool,HQ
10.1.2.0/24,lab-tablets,Lab,Research
10.1.2.7/32,phone-0007,Alice Martin,Finance
2001:db8:1::/48,v6-fleet,Mobile fleet,Ops
2001:db8:1:2::/64,v6-team,Team Two,Ops
"""

DNS_NAMES = ["long.weixin.qq.com", "dns.weixin.qq.com", "www.wechat.com", "kaspersky.com", "dnl-01.geo.kaspersky.com"]
URLS = ["http://dldir1.qq.com/weixin/android/weixin.apk", "https://kaspersky-labs.com/update/index.xml"]


@dataclass
class Generated:
    events: list[HitEvent]
    policy: Policy


@pytest.fixture(scope="session")
def policy() -> Policy:
    return load_policy([BLOCKLISTS])


def generate(
    policy: Policy, n: int, seed: int = 7, *, start: datetime | None = None, span_days: float = 12
) -> list[HitEvent]:
    """``n`` events around the effective date (half before, half after), DNS and proxy, IPv4 and IPv6 clients."""
    rnd = random.Random(seed)
    # The ban apps' date: a control app (blocklists/controls.yaml) may be effective from 1970, before which no event
    # time is valid.
    effective = min(a.effective for a in policy.apps.values() if getattr(a, "kind", "ban") == "ban")
    start = start or effective - timedelta(days=span_days / 2)
    out: list[HitEvent] = []
    for i in range(n):
        at = start + timedelta(seconds=rnd.uniform(0, span_days * 86400))
        client = rnd.choice(CLIENTS)
        if rnd.random() < 0.6 or i == 3:
            name = HOSTILE if i == 3 else rnd.choice(DNS_NAMES)
            match = policy.match_name(name)
            assert match is not None, name
            fields: dict[str, Any] = {"dns_question_name": name, "dns_question_type": "A"}
            component, action = "dns", "dns-block"
        else:
            url = rnd.choice(URLS)
            match = policy.match_url(url)
            assert match is not None, url
            host = url.split("/")[2]
            fields = {"url_full": url, "url_domain": host, "http_method": "GET"}
            component, action = "proxy", "http-block"
        exempt = client.startswith("10.99.")
        enforced = match.enforced(at, ipaddress.ip_address(client)) and not exempt
        if not exempt and at < match.app.effective and rnd.random() < 0.1:
            enforced = True  # denied before the effective date (e.g. an older policy): must NOT count as enforced
        out.append(
            HitEvent.from_match(
                match,
                action=action,
                component=component,
                version=policy.fingerprint,
                enforced=enforced,
                exempt=exempt,
                at=at,
                source_ip=client,
                source_port=rnd.randrange(1024, 65535),
                **fields,
            )
        )
    return out


def dns_hit(policy: Policy, name: str, client: str, at: datetime, **fields: Any) -> HitEvent:
    """One enforced DNS block of ``name`` by ``client`` at ``at``, as the resolver records it (``fields``: e.g.
    ``device_id``, ``user_name``)."""
    match = policy.match_name(name)
    assert match is not None, name
    return HitEvent.from_match(
        match,
        action="dns-block",
        component="dns",
        version=policy.fingerprint,
        enforced=True,
        at=at,
        source_ip=client,
        dns_question_name=name,
        dns_question_type="A",
        **fields,
    )


def write_events(path: Path, events: Iterable[HitEvent], *, every: int = 0, **writer_kw: Any) -> EventWriter:
    """Write through the real EventWriter (thread, batching, rotation); returns it closed.

    ``every``: flush after that many events, so that batches are small and size rotation happens often.
    """
    w = EventWriter(path, **writer_kw)
    for i, ev in enumerate(events, 1):
        while not w.emit(ev):  # a full queue drops: wait for the writer instead (tests need every event)
            w.flush()
        if every and i % every == 0:
            w.flush()
    w.close()
    assert w.dropped == 0
    return w


def ts(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expected_device(client: str) -> str | None:
    """Brute-force longest prefix over INVENTORY_CSV (independent of enforcer.analyst.inventory)."""
    best: tuple[int, str] | None = None
    addr = ipaddress.ip_address(client)
    for line in INVENTORY_CSV.strip().splitlines()[1:]:
        cidr, device, _, _ = line.split(",")
        net = ipaddress.ip_network(cidr)
        if net.version == addr.version and addr in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, device)
    return best[1] if best else None


def expected_bursts(times: Iterable[datetime], window: float = 60) -> int:
    """Attempts by hand: a hit ``window`` seconds or more after the current burst's first hit starts a new one."""
    n, start = 0, None
    for t in sorted(times):
        if start is None or (t - start).total_seconds() >= window:
            n, start = n + 1, t
    return n


def expected_report(
    policy: Policy,
    events: Iterable[HitEvent],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    apps: set[str] | None = None,
    window: float = 60,
) -> dict[tuple[str, str], dict[str, Any]]:
    """(client, app) -> the clients row, counted straight from the HitEvent objects (no leases, ClientIDs or users:
    every client is identified by the inventory CIDR or its address)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    times: dict[tuple[str, str], list[datetime]] = {}
    enforced_times: dict[tuple[str, str], list[datetime]] = {}
    for ev in events:
        if since is not None and ev.timestamp < since:
            continue
        if until is not None and ev.timestamp >= until:
            continue
        if apps and ev.app not in apps:
            continue
        key = (ev.source_ip or "", ev.app)
        device = expected_device(ev.source_ip or "")
        owner, unit = _expected_owner_unit(ev.source_ip or "")
        row = out.setdefault(
            key,
            {
                "client": ev.source_ip,
                "device": device,
                "owner": owner,
                "unit": unit,
                "identity": "cidr" if device else "address",
                "mac": None,
                "device_id": None,
                "user": None,
                "app": ev.app,
                "hits": 0,
                "attempts": 0,
                "enforced_hits": 0,
                "enforced_attempts": 0,
                "first_seen": ts(ev.timestamp),
                "last_seen": ts(ev.timestamp),
            },
        )
        row["hits"] += 1
        times.setdefault(key, []).append(ev.timestamp)
        if ev.enforced and ev.timestamp >= policy.apps[ev.app].effective:
            row["enforced_hits"] += 1
            enforced_times.setdefault(key, []).append(ev.timestamp)
        row["first_seen"] = min(row["first_seen"], ts(ev.timestamp))
        row["last_seen"] = max(row["last_seen"], ts(ev.timestamp))
    for key, row in out.items():
        row["attempts"] = expected_bursts(times[key], window)
        row["enforced_attempts"] = expected_bursts(enforced_times.get(key, []), window)
    return out


def _expected_owner_unit(client: str) -> tuple[str | None, str | None]:
    device = expected_device(client) if client else None
    for line in INVENTORY_CSV.strip().splitlines()[1:]:
        _, name, owner, unit = line.split(",")
        if name == device:
            return owner, unit
    return None, None


def expected_noncompliant(
    policy: Policy, events: Iterable[HitEvent], now: datetime, window: timedelta
) -> dict[str, int]:
    clients: dict[str, set[str]] = {}
    for ev in events:
        if ev.enforced and ev.timestamp >= policy.apps[ev.app].effective and ev.timestamp >= now - window:
            clients.setdefault(ev.app, set()).add(ev.source_ip or "")
    return {app: len(c) for app, c in clients.items()}


@pytest.fixture
def inventory_file(tmp_path: Path) -> Path:
    p = tmp_path / "inventory.csv"
    p.write_text(INVENTORY_CSV, encoding="utf-8")
    return p


def local_analyst(tmp_path: Path, events: list[str], **settings: Any) -> Analyst:
    """An in-process analyst on 127.0.0.1 over ``events`` with the shipped blocklists, its store in ``tmp_path``,
    parsing in-thread (no parser process); ``settings`` adds or overrides AnalystSettings fields."""
    base: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "events": events,
        "db": str(tmp_path / "a.sqlite"),
        "blocklist": [str(BLOCKLISTS)],
        "parser_process": False,
    }
    return Analyst(AnalystSettings(**{**base, **settings}))
