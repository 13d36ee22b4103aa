"""Precedence, monitor mode (effective date, exempt clients), IDNs, the fingerprint and include feeds."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime
from pathlib import Path

from enforcer.policy import load_policy
from tests.conftest import run_cli
from tests.policy.policy_helpers import app_yaml, enforcer, write

PRECEDENCE = """\
block:
  - domain: example.net
    category: web
  - domain: deep.open.example.net
    category: messaging
  - host: exact.open.example.net
    category: telemetry
  - domain: same.example.org
    category: web
  - domain: dl.example.com
    category: download
  - url: "files.example.org/app/*"
    category: download
allow:
  - domain: open.example.net
  - domain: same.example.org
  - url: "dl.example.com/public/*"
"""


def _verdict(policy, name: str) -> tuple[str, str | None]:  # type: ignore[no-untyped-def]
    m = policy.match_name(name)
    return ("none", None) if m is None else (m.verdict, m.rule.id)


def test_most_specific_wins_and_allow_wins_ties(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "t.yaml", app_yaml("t", PRECEDENCE)))
    assert _verdict(policy, "example.net") == ("block", "t:domain:example.net")
    assert _verdict(policy, "a.example.net") == ("block", "t:domain:example.net")
    assert _verdict(policy, "open.example.net") == ("allow", "t:allow:domain:open.example.net")
    assert _verdict(policy, "x.open.example.net") == ("allow", "t:allow:domain:open.example.net")
    assert _verdict(policy, "deep.open.example.net") == ("block", "t:domain:deep.open.example.net")
    assert _verdict(policy, "y.deep.open.example.net") == ("block", "t:domain:deep.open.example.net")
    # An exact host beats the allow suffix above it, but only for that one name.
    assert _verdict(policy, "exact.open.example.net") == ("block", "t:host:exact.open.example.net")
    assert _verdict(policy, "sub.exact.open.example.net") == ("allow", "t:allow:domain:open.example.net")
    # Equal specificity: allow wins.
    assert _verdict(policy, "same.example.org") == ("allow", "t:allow:domain:same.example.org")
    assert _verdict(policy, "not-example.net")[0] == "none"


def test_url_rules_beat_name_rules(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "t.yaml", app_yaml("t", PRECEDENCE)))
    m = policy.match_url("https://dl.example.com/public/readme.txt")
    assert m is not None and m.verdict == "allow" and m.rule.kind == "url"
    m = policy.match_url("https://dl.example.com/private/app.apk")
    assert m is not None and m.verdict == "block" and m.rule.id == "t:domain:dl.example.com"
    # A url rule on a host that no name rule blocks: only that path.
    m = policy.match_url("http://files.example.org/app/x.apk")
    assert m is not None and m.verdict == "block" and m.rule.kind == "url"
    assert policy.match_url("http://files.example.org/other") is None
    assert policy.match_name("files.example.org") is None
    # Percent-encoding and query order do not hide a path.
    m = policy.match_url("http://files.example.org/%61pp/x.apk?b=2&a=1")
    assert m is not None and m.blocked


def test_allow_wins_ties_across_apps(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", app_yaml("a", "block:\n  - domain: shared.example\n    category: web\n"))
    write(
        tmp_path,
        "b.yaml",
        app_yaml("b", "block:\n  - domain: x.example\n    category: web\nallow:\n  - domain: shared.example\n"),
    )
    for order in ([tmp_path / "a.yaml", tmp_path / "b.yaml"], [tmp_path / "b.yaml", tmp_path / "a.yaml"]):
        m = load_policy(order).match_name("www.shared.example")
        assert m is not None and m.verdict == "allow" and m.rule.app == "b"


def test_enforced_from_effective_midnight_toronto(tmp_path: Path) -> None:
    text = app_yaml("t", "block:\n  - domain: blocked.example\n    category: web\n").replace(
        "  timezone: America/Toronto\n",
        "  timezone: America/Toronto\n  exempt_clients: [10.99.0.0/24, 2001:db8::/64]\n",
    )
    path = write(tmp_path, "t.yaml", text)
    policy = load_policy(path)
    m = policy.match_name("blocked.example")
    assert m is not None
    # Midnight in Toronto on 2023-10-30 is 04:00 UTC (EDT, UTC-4).
    assert policy.apps["t"].effective == datetime(2023, 10, 30, 4, 0, tzinfo=UTC)
    assert not m.enforced(datetime(2023, 10, 30, 3, 59, 59, tzinfo=UTC))
    assert m.enforced(datetime(2023, 10, 30, 4, 0, tzinfo=UTC))
    assert not m.enforced(datetime(2024, 1, 1, tzinfo=UTC), ipaddress.ip_address("10.99.0.7"))
    assert not m.enforced(datetime(2024, 1, 1, tzinfo=UTC), ipaddress.ip_address("::ffff:10.99.0.7"))
    assert not m.enforced(datetime(2024, 1, 1, tzinfo=UTC), ipaddress.ip_address("2001:db8::5"))
    assert m.enforced(datetime(2024, 1, 1, tzinfo=UTC), ipaddress.ip_address("10.98.0.7"))

    def lookup(*extra: str) -> dict[str, object]:
        proc = run_cli("lookup", "--blocklist", str(path), *extra, "blocked.example")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    assert lookup("--at", "2023-10-30T03:59:59Z")["enforced"] is False
    assert lookup("--at", "2023-10-29T23:59:59-04:00")["enforced"] is False
    assert lookup("--at", "2023-10-30T00:00:00-04:00")["enforced"] is True
    assert lookup("--at", "2024-01-01", "--client", "10.99.0.7")["enforced"] is False
    assert lookup("--at", "2024-01-01", "--client", "10.98.0.7")["enforced"] is True
    out = lookup("--at", "2023-01-01")
    assert out["verdict"] == "block" and out["enforced"] is False  # monitor mode: still a block verdict
    bad = enforcer("lookup", "--blocklist", str(path), "--client", "not-an-ip", "blocked.example")
    assert bad.returncode == 1 and bad.stderr.strip() == "--client: not an IP address: 'not-an-ip'"


def test_allow_rule_is_never_enforced(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "t.yaml", app_yaml("t", PRECEDENCE)))
    m = policy.match_name("open.example.net")
    assert m is not None and not m.enforced(datetime(2030, 1, 1, tzinfo=UTC))


def test_idn_rules_and_queries(tmp_path: Path) -> None:
    path = write(tmp_path, "t.yaml", app_yaml("t", "block:\n  - domain: wéchat.com\n    category: messaging\n"))
    policy = load_policy(path)
    assert [r.value for r in policy.rules] == ["xn--wchat-bsa.com"]
    for q in ("wéchat.com", "WÉCHAT.COM.", "xn--wchat-bsa.com", "www.wéchat.com", "Www.XN--WCHAT-BSA.com"):
        m = policy.match_name(q)
        assert m is not None and m.rule.id == "t:domain:xn--wchat-bsa.com", q
    assert policy.match_name("wechat.com") is None
    proc = enforcer("lookup", "--blocklist", str(path), "wéchat.com", "http://wéchat.com/x")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x)["verdict"] for x in proc.stdout.splitlines()] == ["block", "block"]


RULES_A = "block:\n  - domain: a.example\n    category: web\n  - host: h.example\n    category: web\n"
RULES_B = "block:\n  - host: h.example\n    category: web\n  - domain: a.example\n    category: web\n"


def test_fingerprint_stable_under_reordering_changed_by_rules(tmp_path: Path) -> None:
    one = load_policy(write(tmp_path / "1", "t.yaml", app_yaml("t", RULES_A))).fingerprint
    two = load_policy(write(tmp_path / "2", "t.yaml", app_yaml("t", "# a comment moves the lines\n" + RULES_B)))
    assert one == two.fingerprint
    # Files in a different order (and different folder names) give the same fingerprint too.
    write(tmp_path / "3", "x.yaml", app_yaml("x", "block:\n  - domain: x.example\n    category: web\n"))
    write(tmp_path / "3", "t.yaml", app_yaml("t", RULES_A))
    fp3 = load_policy([tmp_path / "3" / "x.yaml", tmp_path / "3" / "t.yaml"]).fingerprint
    assert fp3 == load_policy([tmp_path / "3" / "t.yaml", tmp_path / "3" / "x.yaml"]).fingerprint
    changes = [
        RULES_A.replace("a.example", "b.example"),
        RULES_A.replace("category: web", "category: messaging", 1),
        RULES_A.replace("- host:", "- domain:"),
    ]
    for i, rules in enumerate(changes):
        fp = load_policy(write(tmp_path / f"c{i}", "t.yaml", app_yaml("t", rules))).fingerprint
        assert fp != one, rules
    later = app_yaml("t", RULES_A).replace("2023-10-30", "2023-11-01")
    assert load_policy(write(tmp_path / "d", "t.yaml", later)).fingerprint != one


def test_include_feed_lines(tmp_path: Path) -> None:
    write(
        tmp_path,
        "feeds/list.txt",
        "# hosts-file export of some feed\n"
        "\n"
        "127.0.0.1 localhost\n"
        "::1 ip6-localhost ip6-loopback\n"
        "0.0.0.0 tracker.example ads.example   # two names on one line\n"
        "Upper.Example.\n"
        "   spaced.example   \n"
        "plain.example\n",
    )
    path = write(tmp_path, "t.yaml", app_yaml("t", "block:\n  - include: feeds/list.txt\n    category: web\n"))
    policy = load_policy(path)
    names = {n for n, _rule, _exact in policy.name_entries()}
    assert names == {"tracker.example", "ads.example", "upper.example", "spaced.example", "plain.example"}
    assert policy.counts[("t", "include")] == 5
    m = policy.match_name("cdn.tracker.example")  # feed names are suffix rules
    assert m is not None and m.rule.kind == "include" and m.rule.source == f"{path}:6"
    assert policy.match_name("localhost") is None
    # Editing the feed changes the fingerprint.
    before = policy.fingerprint
    (tmp_path / "feeds/list.txt").write_text("plain.example\nnew.example\n")
    assert load_policy(path).fingerprint != before
