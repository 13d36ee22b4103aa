"""Export semantics without the external tools: triggers, precedence layering, skips, modes, the CLI."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enforcer.policy import load_policy
from enforcer.policy.export import FORMATS, export_policy, rpz_ip_trigger
from enforcer.policy.export_filters import effective_ranges
from enforcer.policy.modes import parse_mode
from tests.conftest import run_cli
from tests.policy.export_fixture import build
from tests.policy.policy_helpers import app_yaml, enforcer, write


def _body(text: str, comment: str = "#") -> list[str]:
    return [x for x in text.splitlines() if x and not x.startswith(comment)]


@pytest.mark.parametrize(
    ("net", "trigger"),
    [
        ("10.0.0.0/32", "32.0.0.0.10.rpz-ip"),
        ("198.51.100.0/24", "24.0.100.51.198.rpz-ip"),
        ("2001:db8::/32", "32.zz.db8.2001.rpz-ip"),
        ("2a03:2480:8037::/48", "48.zz.8037.2480.2a03.rpz-ip"),
        ("2001:db8:0:1:2:3:4:5/128", "128.5.4.3.2.1.0.db8.2001.rpz-ip"),
        ("::/0", "0.zz.rpz-ip"),
    ],
)
def test_rpz_ip_trigger(net: str, trigger: str) -> None:
    assert rpz_ip_trigger(ipaddress.ip_network(net)) == trigger


def test_header_names_fingerprint_and_time(tmp_path: Path) -> None:
    policy = build(tmp_path)
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    for fmt in FORMATS:
        text = export_policy(policy, fmt, now=when)
        c = {"rpz": ";", "adblock": "!"}.get(fmt, "#")
        head = text.splitlines()[:4]
        assert head[0].startswith(f"{c} enforcer export, format {fmt}")
        assert head[1] == f"{c} policy fingerprint: {policy.fingerprint}"
        assert head[2] == f"{c} generated: 2024-05-06T07:08:09Z"
        assert text.endswith("\n")


def test_rpz_records_follow_precedence(tmp_path: Path) -> None:
    body = _body(export_policy(build(tmp_path), "rpz"), ";")
    assert "blocked.example CNAME ." in body and "*.blocked.example CNAME ." in body
    assert "open.blocked.example CNAME rpz-passthru." in body and "*.open.blocked.example CNAME rpz-passthru." in body
    assert "*.inner.open.blocked.example CNAME ." in body
    # An exact host is its name only; an exact allow is passthru for its name only.
    assert "exact.shared.example CNAME ." in body and "*.exact.shared.example CNAME ." not in body
    assert "host-allowed.blocked.example CNAME rpz-passthru." in body
    assert "25.128.100.51.198.rpz-ip CNAME rpz-passthru." in body
    # One record set per owner: a CNAME never shares its owner.
    owners = [x.split()[0] for x in body if x.split()[1] == "CNAME"]
    assert len(owners) == len(set(owners))


@pytest.mark.parametrize(
    ("mode", "records"),
    [
        ("nodata", ["blocked.example CNAME *."]),
        ("null", ["blocked.example A 0.0.0.0", "blocked.example AAAA ::"]),
        ("ip:192.0.2.1", ["blocked.example A 192.0.2.1"]),
    ],
)
def test_rpz_modes(tmp_path: Path, mode: str, records: list[str]) -> None:
    body = _body(export_policy(build(tmp_path), "rpz", mode=mode), ";")
    for r in records:
        assert r in body
    if mode != "nodata":
        # check-names would reject an A record owned by a '_' name: skipped and counted in the header.
        text = export_policy(build(tmp_path), "rpz", mode=mode)
        assert "_dmarc" not in "\n".join(body)
        assert "skipped 1 entry ('_' in a name that would own A/AAAA records)" in text


def test_unbound_layers(tmp_path: Path) -> None:
    body = _body(export_policy(build(tmp_path), "unbound", mode="nxdomain"))
    assert body[0] == "server:"
    assert 'local-zone: "blocked.example." always_nxdomain' in body
    assert 'local-zone: "open.blocked.example." always_transparent' in body
    assert 'local-zone: "inner.open.blocked.example." always_nxdomain' in body
    assert 'local-zone: "host-allowed.blocked.example." transparent' in body
    ip = _body(export_policy(build(tmp_path), "unbound", mode="ip:192.0.2.1,2001:db8::1"))
    assert 'local-zone: "blocked.example." redirect' in ip
    assert (
        'local-data: "blocked.example. A 192.0.2.1"' in ip and 'local-data: "blocked.example. AAAA 2001:db8::1"' in ip
    )


def test_dnsmasq_lines(tmp_path: Path) -> None:
    body = _body(export_policy(build(tmp_path), "dnsmasq", mode="null"))
    assert "address=/blocked.example/0.0.0.0" in body and "address=/blocked.example/::" in body
    assert "server=/open.blocked.example/#" in body
    assert "address=/inner.open.blocked.example/0.0.0.0" in body
    nx = _body(export_policy(build(tmp_path), "dnsmasq"))
    assert "address=/blocked.example/" in nx


def test_hosts_and_domains(tmp_path: Path) -> None:
    text = export_policy(build(tmp_path), "hosts")
    body = _body(text)
    assert "0.0.0.0 blocked.example" in body and "0.0.0.0 exact.shared.example" in body
    assert all(not x.endswith("open.blocked.example") or "inner" in x for x in body)
    assert "cannot express domain suffixes" in text
    assert "skipped 1 entry ('_' is not allowed in host names), e.g. _dmarc.feed-three.example" in text
    domains = export_policy(build(tmp_path), "domains")
    assert "blocked.example" in _body(domains) and "open.blocked.example" not in _body(domains)
    assert "allow exceptions (not expressible in this format): host-allowed.blocked.example, open.blocked.example" in (
        domains
    )


def test_adblock_and_squid_layers(tmp_path: Path) -> None:
    ad = _body(export_policy(build(tmp_path), "adblock"), "!")
    assert ad[:4] == [
        "||blocked.example^",
        "@@||host-allowed.blocked.example^",
        "@@||open.blocked.example^",
        "||inner.open.blocked.example^$important",
    ]
    assert "||dl.shared.example/app/*" in ad
    squid = export_policy(build(tmp_path), "squid")
    assert sorted(_body(squid)) == [
        "._dmarc.feed-three.example",
        ".blocked.example",
        ".feed-one.example",
        ".feed-two.example",
        "exact.shared.example",
    ]
    assert "#   http_access deny enforcer_block_2\n#   http_access deny enforcer_block !enforcer_allow_1" in squid


def test_nftables_subtracts_allow_holes() -> None:
    def ranges(*rules: tuple[str, str]) -> list[str]:
        from enforcer.policy import Rule

        items = [
            (ipaddress.ip_network(n), Rule(n, "a", act, "cidr", n, None, "x:1"))  # type: ignore[arg-type]
            for n, act in rules
        ]
        return [str(n) for n in effective_ranges(items, 4)]

    assert ranges(("10.0.0.0/8", "block"), ("10.0.0.0/9", "allow")) == ["10.128.0.0/9"]
    assert ranges(("10.0.0.0/24", "block"), ("10.0.0.0/24", "allow")) == []  # allow wins at equal specificity
    assert ranges(("10.0.0.0/24", "block"), ("10.0.0.0/25", "allow"), ("10.0.0.0/26", "block")) == [
        "10.0.0.0/26",
        "10.0.0.128/25",
    ]
    # Overlaps and neighbours merge (nft rejects overlapping interval elements).
    assert ranges(("10.0.0.0/8", "block"), ("10.1.0.0/16", "block"), ("11.0.0.0/8", "block")) == ["10.0.0.0/7"]


def test_modes_and_errors(tmp_path: Path) -> None:
    policy = build(tmp_path)
    assert parse_mode("ip:192.0.2.1,2001:db8::1").addresses == ("192.0.2.1", "2001:db8::1")
    assert parse_mode("null").addresses == ("0.0.0.0", "::")
    for bad in ("ip:1.2.3", "ip:1.1.1.1,2.2.2.2", "sinkhole"):
        with pytest.raises(ValueError, match="mode"):
            parse_mode(bad)
    with pytest.raises(ValueError, match="not supported by the dnsmasq format"):
        export_policy(policy, "dnsmasq", mode="nodata")
    with pytest.raises(ValueError, match="unknown format"):
        export_policy(policy, "bind")
    with pytest.raises(ValueError, match="--zone"):
        export_policy(policy, "rpz", zone="bad..zone")


def test_long_names_are_skipped_not_truncated(tmp_path: Path) -> None:
    label = "a" * 60
    name = ".".join([label, label, label, "example"])  # 191 characters: fine alone, too long under a long zone
    write(tmp_path, "t.yaml", app_yaml("t", f"block:\n  - domain: {name}\n    category: web\n"))
    policy = load_policy(tmp_path / "t.yaml")
    zone = ".".join(["z" * 60] * 1) + ".rpz.example."
    text = export_policy(policy, "rpz", zone=zone)
    assert name not in "\n".join(_body(text, ";"))
    assert "skipped 1 entry (too long below the RPZ zone name)" in text


def test_cli_export_to_file_and_errors(tmp_path: Path) -> None:
    policy_dir = tmp_path / "p"
    build(policy_dir)
    out = tmp_path / "out.rpz"
    proc = enforcer("export", "--format", "rpz", "--blocklist", str(policy_dir), "--zone", "rpz.test.", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "$ORIGIN rpz.test." in out.read_text()
    proc = run_cli("export", "--format", "dnsmasq", "--mode", "nodata", "--blocklist", str(policy_dir))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "export: mode 'nodata' is not supported by the dnsmasq format (use one of: nxdomain, null, ip)"
    ]
    proc = run_cli("export", "--format", "nope")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_apps_before_their_effective_date_are_not_blocked(tmp_path: Path) -> None:
    """Monitor mode: before the effective date a hit is let through, so the export must not block it either."""
    early = datetime(2023, 10, 29, tzinfo=UTC)  # the fixture app is effective 2023-10-30 (Toronto)
    policy = build(tmp_path)
    rpz = _body(export_policy(policy, "rpz", now=early), ";")
    assert "blocked.example CNAME rpz-passthru." in rpz and "blocked.example CNAME ." not in rpz
    assert "24.0.100.51.198.rpz-ip CNAME rpz-passthru." in rpz
    assert not [x for x in _body(export_policy(policy, "hosts", now=early))]
    assert not [x for x in _body(export_policy(policy, "dnsmasq", now=early)) if x.startswith("address=")]
    assert not [x for x in _body(export_policy(policy, "unbound", now=early)) if "always_nxdomain" in x]
    assert "elements" not in export_policy(policy, "nftables", now=early)
    assert not [x for x in _body(export_policy(policy, "adblock", now=early), "!") if not x.startswith("@@")]
    text = export_policy(policy, "squid", now=early)
    assert _body(text) == []  # nothing blocked
    assert "monitor mode at generation time: testapp (effective 2023-10-30T00:00:00-04:00)" in text
    # From the effective date on, the same policy blocks.
    later = export_policy(policy, "rpz", now=datetime(2023, 10, 30, 4, 0, tzinfo=UTC))
    assert "blocked.example CNAME ." in _body(later, ";") and "monitor mode" not in later


def test_exempt_clients_are_named_in_the_header(tmp_path: Path) -> None:
    text = app_yaml("t", "block:\n  - domain: a.example\n    category: web\n").replace(
        "  timezone: America/Toronto\n", "  timezone: America/Toronto\n  exempt_clients: [10.99.0.0/24]\n"
    )
    policy = load_policy(write(tmp_path, "t.yaml", text))
    out = export_policy(policy, "unbound")
    assert "# exempt clients are not expressible here and are blocked like any other: t: 10.99.0.0/24" in out
