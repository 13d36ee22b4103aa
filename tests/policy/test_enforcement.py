"""The one owner of "after the effective date, not an exempt client" (enforcer/policy/enforcement.py)."""

from __future__ import annotations

import ipaddress
import pickle
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from enforcer.net import MEMO_MAX
from enforcer.policy.enforcement import Cutover, Enforcement, to_us
from enforcer.policy.model import AppPolicy, Match, Rule

TZ = ZoneInfo("Asia/Shanghai")
EFFECTIVE = datetime(2023, 10, 30, 12, 0, tzinfo=TZ)  # 04:00 UTC
NETS = (ipaddress.ip_network("10.99.0.0/16"), ipaddress.ip_network("fd00:99::/32"))
US = timedelta(microseconds=1)


def _app(name: str = "wechat", exempt: tuple = NETS) -> AppPolicy:
    return AppPolicy(name, name, "v", EFFECTIVE, "Asia/Shanghai", exempt, "", "", "x.yaml")


def test_to_us_is_exact_and_zone_independent() -> None:
    assert to_us(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert to_us(EFFECTIVE) == to_us(datetime(2023, 10, 30, 4, 0, tzinfo=UTC)) == 1698638400_000000
    assert to_us(EFFECTIVE - US) == 1698638399_999999
    assert to_us(datetime(2023, 10, 30, 4, 0)) == 1698638400_000000  # naive: UTC


@pytest.mark.parametrize(
    ("when", "client", "expected"),
    [
        (EFFECTIVE - US, "192.0.2.1", (False, False)),
        (EFFECTIVE, "192.0.2.1", (True, False)),
        (EFFECTIVE + timedelta(days=400), "192.0.2.1", (True, False)),
        (EFFECTIVE - US, "10.99.3.4", (False, True)),
        (EFFECTIVE, "10.99.3.4", (False, True)),
        (EFFECTIVE, "::ffff:10.99.3.4", (False, True)),  # IPv4-mapped: judged as its IPv4
        (EFFECTIVE, "fd00:99::1%eth0", (False, True)),  # zone stripped
        (EFFECTIVE, "fd00:98::1", (True, False)),
        (EFFECTIVE, "not-an-address", (True, False)),
        (EFFECTIVE, "", (True, False)),
        (EFFECTIVE, None, (True, False)),
        (EFFECTIVE, ipaddress.ip_address("10.99.0.1"), (False, True)),
        (EFFECTIVE, ipaddress.ip_address("10.98.0.1"), (True, False)),
    ],
)
def test_decide(when: datetime, client: object, expected: tuple[bool, bool]) -> None:
    table = Enforcement({"wechat": _app()})
    assert table.decide("wechat", client, to_us(when)) == expected  # type: ignore[arg-type]
    assert table.decide_at("wechat", client, when) == expected  # type: ignore[arg-type]
    assert table.is_exempt("wechat", client) is expected[1]  # type: ignore[arg-type]
    # Match.enforced (the proxy and `enforcer lookup`) is the same rule for a block rule, never for an allow rule.
    app = table.cutovers["wechat"]
    assert app.decide(client, to_us(when)) == expected  # type: ignore[arg-type]
    addr = ipaddress.ip_address(client) if isinstance(client, str) and client.count(".") == 3 else None
    if addr is not None or not isinstance(client, str):
        block = Match(Rule("r", "wechat", "block", "domain", "x", None, "x:1"), _app())
        allow = Match(Rule("r", "wechat", "allow", "domain", "x", None, "x:1"), _app())
        assert block.enforced(when, addr if addr is not None else client) is expected[0]  # type: ignore[arg-type]
        assert allow.enforced(when, addr if addr is not None else client) is False  # type: ignore[arg-type]


def test_unknown_app_and_no_exempt() -> None:
    table = Enforcement({"wechat": _app(exempt=())})
    assert table.decide("gone", "10.99.0.1", 0) == (True, False)
    assert table.decide("wechat", "10.99.0.1", to_us(EFFECTIVE)) == (True, False)
    assert table.monitor_apps(to_us(EFFECTIVE) - 1) == {"wechat"}
    assert table.monitor_apps(to_us(EFFECTIVE)) == frozenset()


def test_memo_is_bounded() -> None:
    c = Cutover("wechat", EFFECTIVE, NETS)
    for i in range(MEMO_MAX + 10):
        c.is_exempt(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")
    assert 0 < len(c.exempt_set._memo) <= MEMO_MAX
    assert c.is_exempt("10.99.0.1") and not c.is_exempt("10.98.0.1")


def test_pickles_without_memo() -> None:
    table = Enforcement({"wechat": _app()})
    table.is_exempt("wechat", "10.99.0.1")
    copy = pickle.loads(pickle.dumps(table))
    c = copy.cutovers["wechat"]
    assert (c.at_us, c.exempt, c.exempt_set._memo) == (to_us(EFFECTIVE), NETS, {})
    assert copy.decide("wechat", "10.99.0.1", to_us(EFFECTIVE)) == (False, True)
