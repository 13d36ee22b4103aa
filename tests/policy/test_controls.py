"""``kind: ban|control`` blocklists and the per-rule ``dns_action`` (issue 12, "Bypass controls").

A control app's rules block like any rule, but its hits are bypass attempts, never non-compliance: the analyst's
enforced-attempt rule (``Enforcement.sql`` in a real SQLite, ``Enforcement.enforced_attempt`` in Python) counts ban
apps by default and control apps only when asked.
"""

from __future__ import annotations

import pickle
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enforcer.events import HitEvent
from enforcer.policy import Policy, PolicyError, load_policy
from enforcer.policy.enforcement import SQL_EXEMPT_FUNCTION, AppKind, Enforcement, to_us
from tests.policy.policy_helpers import write

BAN = """\
app: banned
policy:
  effective: 2023-10-30
  exempt_clients: [10.9.0.0/16]
block:
  - domain: banned.test
    category: messaging
"""
CONTROL = """\
app: controls
kind: control
block:
  - host: canary.test
    category: bypass
    dns_action: nxdomain
  - domain: doh.test
    category: bypass
  - cidr: 192.0.2.53/32
    category: bypass
    dns_action: refused
"""
AFTER = to_us(datetime(2024, 1, 1, tzinfo=UTC))
BEFORE = to_us(datetime(2023, 1, 1, tzinfo=UTC))


def _policy(tmp_path: Path, control: str = CONTROL) -> Policy:
    write(tmp_path, "ban.yaml", BAN)
    write(tmp_path, "controls.yaml", control)
    return load_policy(tmp_path)


def _errors(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, "c.yaml", text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    return [str(p).removeprefix(f"{path}:") for p in err.value.problems if p.severity == "error"]


def test_kind_and_dns_action_reach_the_policy(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    assert policy.apps["banned"].kind == "ban" and policy.apps["controls"].kind == "control"
    assert policy.control_apps == frozenset({"controls"}) and policy.ban_apps == frozenset({"banned"})
    canary = policy.match_name("canary.test")
    assert canary is not None and canary.blocked and canary.rule.dns_action == "nxdomain"
    doh = policy.match_name("x.doh.test")
    assert doh is not None and doh.blocked and doh.rule.dns_action is None
    ip = policy.match_ip("192.0.2.53")
    assert ip is not None and ip.rule.dns_action == "refused"
    assert policy.match_name("banned.test").rule.dns_action is None  # type: ignore[union-attr]


def test_a_control_file_without_effective_blocks_from_the_start(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    canary = policy.match_name("canary.test")
    assert canary is not None
    assert canary.enforced(datetime(1971, 1, 1, tzinfo=UTC))
    assert policy.enforcement.decide("controls", "10.9.1.1", BEFORE) == (True, False)


def test_a_control_file_keeps_its_own_effective_date_and_exemptions(tmp_path: Path) -> None:
    text = CONTROL.replace(
        "kind: control\n", "kind: control\npolicy:\n  effective: 2024-06-01\n  exempt_clients: [10.7.0.0/16]\n"
    )
    policy = _policy(tmp_path, text)
    june = to_us(datetime(2024, 6, 1, tzinfo=UTC))
    assert policy.enforcement.decide("controls", "192.0.2.1", june - 1) == (False, False)
    assert policy.enforcement.decide("controls", "192.0.2.1", june) == (True, False)
    assert policy.enforcement.decide("controls", "10.7.0.1", june) == (False, True)


def test_the_kind_and_the_dns_action_change_the_fingerprint(tmp_path: Path) -> None:
    base = _policy(tmp_path).fingerprint
    other = tmp_path / "b"
    other.mkdir()
    assert _policy(other, CONTROL.replace("    dns_action: nxdomain\n", "")).fingerprint != base
    third = tmp_path / "c"
    third.mkdir()
    assert (
        _policy(third, CONTROL.replace("kind: control\n", "kind: ban\npolicy: {effective: 1970-01-01}\n")).fingerprint
        != base
    )


def _store(rows: list[tuple[int, str, str, int]]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE events (denied INTEGER, ts INTEGER, app TEXT, client TEXT)")
    conn.executemany("INSERT INTO events (denied, app, client, ts) VALUES (?, ?, ?, ?)", rows)
    return conn


ROWS = [
    (1, "banned", "192.0.2.1", AFTER),  # enforced ban attempt
    (1, "banned", "10.9.0.1", AFTER),  # exempt
    (1, "banned", "192.0.2.2", BEFORE),  # before the ban's date
    (1, "controls", "192.0.2.3", AFTER),  # bypass attempt
    (1, "controls", "192.0.2.4", BEFORE),  # bypass attempt (controls have no date)
    (0, "controls", "192.0.2.5", AFTER),  # not denied
    (1, "gone", "192.0.2.6", BEFORE),  # an app no longer in the policy: a ban app, enforced
]


@pytest.mark.parametrize(
    ("kind", "clients"),
    [
        ("ban", {"192.0.2.1", "192.0.2.6"}),
        ("control", {"192.0.2.3", "192.0.2.4"}),
        (None, {"192.0.2.1", "192.0.2.6", "192.0.2.3", "192.0.2.4"}),
    ],
)
def test_non_compliance_counts_ban_apps_and_bypass_attempts_control_apps(
    tmp_path: Path, kind: AppKind | None, clients: set[str]
) -> None:
    table = _policy(tmp_path).enforcement
    # The pickled table (report workers) decides the same.
    for enforcement in (table, pickle.loads(pickle.dumps(table))):
        assert enforcement.controls == frozenset({"controls"})
        conn = _store(ROWS)
        conn.create_function(SQL_EXEMPT_FUNCTION, 2, enforcement.is_exempt, deterministic=True)
        expr, params = enforcement.sql(kind=kind)
        got = {c for (c,) in conn.execute(f"SELECT client FROM events WHERE {expr}", params)}
        assert got == clients
        in_python = {
            client
            for denied, app, client, ts in ROWS
            if enforcement.enforced_attempt(bool(denied), app, client, ts, kind)
        }
        assert in_python == clients


def test_the_default_is_ban_and_a_policy_without_controls_renders_the_same_sql(tmp_path: Path) -> None:
    write(tmp_path, "ban.yaml", BAN)
    table = load_policy(tmp_path).enforcement
    assert table.sql() == table.sql(kind="ban") == table.sql(kind=None)
    assert "NOT IN" not in table.sql()[0]
    conn = _store(ROWS)
    conn.create_function(SQL_EXEMPT_FUNCTION, 2, table.is_exempt, deterministic=True)
    expr, params = table.sql(kind="control")
    assert conn.execute(f"SELECT count(*) FROM events WHERE {expr}", params).fetchone() == (0,)
    empty = Enforcement(())
    assert empty.sql() == ("denied", []) and empty.kind("x") == "ban"
    expr, params = empty.sql(kind="control")
    assert conn.execute(f"SELECT count(*) FROM events WHERE {expr}", params).fetchone() == (0,)


def test_the_kind_is_part_of_the_memo_key(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    as_ban = tmp_path / "b"
    as_ban.mkdir()
    other = _policy(as_ban, CONTROL.replace("kind: control\n", "kind: ban\npolicy: {effective: 1970-01-01}\n"))
    assert policy.enforcement.key() != other.enforcement.key()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (CONTROL.replace("kind: control", "kind: allow"), "2:7: 'kind' must be one of: ban, control (got 'allow')"),
        (CONTROL.replace("kind: control", "kind: [control]"), "2:7: 'kind' must be a single value"),
        (
            CONTROL.replace("dns_action: nxdomain", "dns_action: sinkhole"),
            "6:17: 'dns_action' must be one of: nxdomain, null, nodata, refused (got 'sinkhole')",
        ),
        (
            CONTROL.replace("dns_action: nxdomain", "dns_action: ip:10.0.0.1"),
            "6:17: 'dns_action' must be one of: nxdomain, null, nodata, refused (got 'ip:10.0.0.1')",
        ),
        (
            CONTROL + "  - url: 'doh.test/dns-query*'\n    category: bypass\n    dns_action: nxdomain\n",
            "14:17: 'dns_action' applies to domain, host, include, cidr rules (not url: proxy only)",
        ),
        (
            CONTROL + "  - store: {google_play: com.x}\n    category: bypass\n    dns_action: nxdomain\n",
            "14:17: 'dns_action' applies to domain, host, include, cidr rules (not store: proxy only)",
        ),
        (
            CONTROL + "allow:\n  - host: ok.doh.test\n    dns_action: nxdomain\n",
            "14:17: 'dns_action' applies to block rules only",
        ),
        (
            BAN.replace("policy:\n  effective: 2023-10-30\n  exempt_clients: [10.9.0.0/16]\n", ""),
            "missing required key 'policy'",
        ),
        (BAN.replace("  effective: 2023-10-30\n", ""), "missing required key 'policy.effective'"),
    ],
)
def test_bad_kinds_and_dns_actions_are_located_errors(tmp_path: Path, text: str, expected: str) -> None:
    errors = _errors(tmp_path, text)
    assert any(e.startswith(expected) or expected in e for e in errors), errors


def test_dns_action_case_is_folded_and_a_host_with_another_answer_is_not_shadowed(tmp_path: Path) -> None:
    text = CONTROL.replace("dns_action: nxdomain", "dns_action: NXDOMAIN") + (
        "  - host: a.doh.test\n    category: bypass\n    dns_action: nxdomain\n"
        "  - host: b.doh.test\n    category: bypass\n"
    )
    path = write(tmp_path, "c.yaml", text)
    policy = load_policy(path)
    assert policy.match_name("canary.test").rule.dns_action == "nxdomain"  # type: ignore[union-attr]
    assert policy.match_name("a.doh.test").rule.dns_action == "nxdomain"  # type: ignore[union-attr]
    shadowed = [str(w) for w in policy.warnings if "shadowed" in str(w)]
    assert len(shadowed) == 1 and "b.doh.test" in shadowed[0], shadowed


def test_hit_events_carry_labels_kind_control_and_ban_events_stay_unchanged(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    when = datetime(2024, 1, 1, tzinfo=UTC)
    for name, expected in (("canary.test", {"kind": "control"}), ("banned.test", None)):
        match = policy.match_name(name)
        assert match is not None
        doc = HitEvent.from_match(
            match, action="dns-block", component="dns", version=policy.fingerprint, enforced=True, at=when
        ).to_ecs()
        assert doc.get("labels") == expected
    match = policy.match_name("canary.test")
    assert match is not None
    doc = HitEvent.from_match(
        match, action="dns-block", component="dns", version="v", enforced=False, exempt=True, dns_transport="dot"
    ).to_ecs()
    assert doc["labels"] == {"exempt": True, "dns_transport": "dot", "kind": "control"}
