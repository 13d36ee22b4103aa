"""Unit tests of ``enforcer/proxy/decide.py``: pure functions over a small policy, no mitmproxy objects.

Host anomalies (``authority_host`` on hostile Host values) are covered family by family in test_hardening.py; here
the plain behaviour of each helper, one test per job.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import pytest

from enforcer.policy import Policy, load_policy
from enforcer.policy.enforcement import to_us
from enforcer.proxy.decide import (
    ALLOW,
    ALLOWED,
    BLOCKED,
    MONITORED,
    BadHost,
    ConnState,
    UnparsableRequest,
    Verdict,
    authority_host,
    client_address,
    judge,
    match_request,
    request_hosts,
    url_for,
)
from tests.proxy.helpers import write_policy

ALLOW_RULE = "allow:\n  - domain: ok.blocked.test\n"
LATER = datetime(2031, 1, 1, tzinfo=UTC)  # after the effective date of the policy below, whatever its timezone


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    folder = tmp_path_factory.mktemp("decide")
    return load_policy(write_policy(folder, effective="2030-01-01", exempt="[10.99.0.0/24]", extra_rules=ALLOW_RULE))


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# -- Verdict / judge ---------------------------------------------------------------------------------------------
def test_no_match_and_allow_matches_are_allowed(policy: Policy) -> None:
    assert judge(policy, None, to_us(LATER), None) is ALLOW
    allow = policy.match_host("ok.blocked.test")
    assert allow is not None and not allow.blocked
    v = judge(policy, allow, to_us(LATER), _ip("10.1.1.1"))
    assert v.match is allow and v.outcome == ALLOWED and not v.blocked and not v.monitored and not v.exempt


def test_block_match_is_monitored_before_the_effective_instant_and_blocked_from_it(policy: Policy) -> None:
    match = policy.match_host("blocked.test")
    assert match is not None and match.blocked
    at = to_us(policy.apps["testapp"].effective)
    before = judge(policy, match, at - 1, _ip("10.1.1.1"))
    on = judge(policy, match, at, _ip("10.1.1.1"))
    later = judge(policy, match, at + 86_400_000_000, None)  # a day on
    assert (before.outcome, before.blocked, before.monitored) == (MONITORED, False, True)
    assert (on.outcome, on.blocked, on.monitored) == (BLOCKED, True, False)
    assert later.outcome == BLOCKED  # an unknown client (None) is never exempt


@pytest.mark.parametrize("client", ["10.99.0.7", "::ffff:10.99.0.7"])
def test_exempt_client_is_monitored_and_marked_exempt(policy: Policy, client: str) -> None:
    match = policy.match_host("x.blocked.test")
    assert match is not None
    v = judge(policy, match, to_us(policy.apps["testapp"].effective) + 1, _ip(client))
    assert v.outcome == MONITORED and v.exempt and not v.enforced


def test_verdict_outcomes() -> None:
    assert Verdict(None).outcome == ALLOWED and not Verdict(None).monitored
    state = ConnState()
    assert state.refused is None and state.logged == set() and state.url_allowed == set()


# -- client_address ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (("10.1.2.3", 50000), (_ip("10.1.2.3"), 50000)),
        (("fe80::1%eth0", 443, 0, 2), (_ip("fe80::1"), 443)),  # the zone picks an interface, not a client
        (("::1", "8080"), (_ip("::1"), 8080)),
        (("not-an-ip", 1), (None, None)),
        ("/run/enforcer.sock", (None, None)),
        (("10.1.2.3",), (None, None)),
        (None, (None, None)),
    ],
)
def test_client_address(peer: object, expected: tuple[object, object]) -> None:
    assert client_address(peer) == expected


# -- request_hosts -----------------------------------------------------------------------------------------------
def test_request_hosts_destination_first_each_once() -> None:
    hosts = request_hosts(
        "Example.ORG", ["example.org."], "example.org:443", ["example.org", None, "sni.test", "SNI.test."]
    )
    assert hosts == ["Example.ORG", "sni.test"]
    assert request_hosts("a.test", ["b.test:8080"], "[2001:db8::1]:443", ["c.test"]) == [
        "a.test",
        "2001:db8::1",
        "b.test",
        "c.test",
    ]
    assert request_hosts("a.test", [""], "") == ["a.test"]  # an empty Host names nothing


@pytest.mark.parametrize("values", [["a.test", "a.test"], ["a.test", "b.test"], ["", "b.test"]])
def test_more_than_one_host_field_is_bad(values: list[str]) -> None:
    with pytest.raises(BadHost, match="2 Host header fields"):
        request_hosts("a.test", values)


@pytest.mark.parametrize("authority", ["a.test:80:80", "user@a.test", "[::1", "a.test:99999"])
def test_a_bad_authority_is_bad(authority: str) -> None:
    with pytest.raises(BadHost):
        request_hosts("a.test", (), authority)


def test_every_control_character_and_separator_in_a_host_is_bad_and_nothing_else() -> None:
    # The characters some parser splits a host on, and every C0 control and DEL; any other character is the
    # matcher's business (IDNA, a name that matches nothing), not a second reading.
    bad = set("@/\\?#% ,") | {chr(c) for c in range(0x20)} | {"\x7f"}
    for code in [*range(0x3000), 0xFEFF, 0xFFFD, 0x1F600]:
        ch = chr(code)
        if ch in "[:":  # bracket and colon have their own rules (IPv6 literal, port)
            continue
        value = f"a{ch}b.test:80"
        if ch in bad:
            with pytest.raises(BadHost):
                authority_host(value)
        else:
            assert authority_host(value) == f"a{ch}b.test", hex(code)


def test_a_host_header_equal_to_the_authority_is_read_once_and_a_different_one_is_read_too() -> None:
    assert request_hosts("a.test", ["a.test:80"], "a.test:80") == ["a.test"]
    assert request_hosts("a.test", ["b.test"], "a.test:80") == ["a.test", "b.test"]
    with pytest.raises(BadHost):
        request_hosts("a.test", ["user@b.test"], "a.test")


# -- url_for -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scheme", "host", "port", "path", "url"),
    [
        ("http", "a.test", 80, "/x?y=1", "http://a.test/x?y=1"),
        ("https", "a.test", 443, "/", "https://a.test/"),
        ("https", "a.test", 8443, "/x", "https://a.test:8443/x"),
        ("http", "a.test", 443, "/x", "http://a.test:443/x"),
        ("http", "a.test", None, "", "http://a.test/"),
        ("http", "a.test", 80, "*", "http://a.test/"),
        ("http", "a.test", 80, "x", "http://a.test/x"),
        ("http", "2001:db8::1", 80, "/", "http://[2001:db8::1]/"),
        ("https", "[2001:db8::1]", 8443, "/", "https://[2001:db8::1]:8443/"),
    ],
)
def test_url_for(scheme: str, host: str, port: int | None, path: str, url: str) -> None:
    assert url_for(scheme, host, port, path) == url


# -- match_request -----------------------------------------------------------------------------------------------
def test_a_blocking_host_wins_wherever_it_stands(policy: Policy) -> None:
    for hosts in (["www.example.org", "blocked.test"], ["blocked.test", "www.example.org"]):
        match, url = match_request(policy, "http", hosts, 80, "/p", "GET")
        assert match is not None and match.blocked and url == "http://blocked.test/p", hosts
    match, url = match_request(policy, "https", ["www.example.org", "shared.test"], 443, "/app/x.exe", "GET")
    assert match is not None and match.rule.kind == "url" and url == "https://shared.test/app/x.exe"


def test_without_a_block_the_first_parsable_host_answers(policy: Policy) -> None:
    assert match_request(policy, "http", ["www.example.org", "ok.blocked.test"], 80, "/", "GET") == (
        None,
        "http://www.example.org/",
    )
    match, url = match_request(policy, "http", ["ok.blocked.test", "www.example.org"], 80, "/", "GET")
    assert match is not None and not match.blocked and url == "http://ok.blocked.test/"


@pytest.mark.parametrize("hosts", [[], ["[::1"], [".", "a:b:c", "[x]"]])
def test_no_parsable_host_is_unparsable(policy: Policy, hosts: list[str]) -> None:
    with pytest.raises(UnparsableRequest):
        match_request(policy, "http", hosts, 80, "/", "GET")
