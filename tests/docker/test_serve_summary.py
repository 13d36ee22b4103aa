"""`serve`'s summary names an address clients can use when a component listens on every address (0.0.0.0 / ::),
as the image's defaults do: never `dig @0.0.0.0` or `http://0.0.0.0:...` (issue 15, item 5)."""

from __future__ import annotations

import re

import pytest

from enforcer.serve import reachable, summary

WILDCARD = re.compile(r"(@|//)(0\.0\.0\.0|\[?::\]?)[:\s]")


def _info(dns: str, metrics: str, analyst: str) -> dict[str, str]:
    return {"blocklist": "b", "data": "d", "events": "d/events", "dns": dns, "dns_metrics": metrics,
            "proxy": "127.0.0.1:8080", "proxy_metrics": metrics, "ca": "ca.pem", "analyst": analyst,
            "analyst_token_file": "t"}  # fmt: skip


@pytest.mark.parametrize(
    ("dns", "metrics", "analyst"),
    [
        ("0.0.0.0:5353", "127.0.0.1:9153", "http://127.0.0.1:8000/"),
        ("[::]:5353", "127.0.0.1:9153", "http://127.0.0.1:8000/"),
        ("127.0.0.1:5353", "0.0.0.0:9153", "http://127.0.0.1:8000/"),
        ("127.0.0.1:5353", "127.0.0.1:9153", "http://0.0.0.0:8000/"),
        ("0.0.0.0:5353", "0.0.0.0:9153", "http://0.0.0.0:8000/"),
    ],
    ids=["dns-any4", "dns-any6", "metrics-any", "analyst-any", "all-any"],
)
def test_no_wildcard_address_to_connect_to(dns: str, metrics: str, analyst: str) -> None:
    text = summary(_info(dns, metrics, analyst), "tok")
    assert not WILDCARD.search(text), text
    assert re.search(r"dig @\S+ -p 5353 ", text)
    assert re.search(r"http://\S+:8000/ ", text)
    if "0.0.0.0" in dns or "::" in dns:
        assert "on every address" in text


@pytest.mark.parametrize("address", ["127.0.0.1:5353", "[::1]:5353", "192.0.2.7:5353"])
def test_a_specific_address_is_kept(address: str) -> None:
    assert reachable(address) == address
    assert "on every address" not in summary(_info(address, "127.0.0.1:9153", "http://127.0.0.1:8000/"), None)


@pytest.mark.usefixtures("loopback_netns")
@pytest.mark.parametrize("address", ["0.0.0.0:5353", "[::]:5353"])
def test_without_a_route_a_placeholder(address: str) -> None:
    """A container with --network none (only loopback): no host address to name, so a placeholder, not 0.0.0.0."""
    assert reachable(address) == "<this host's address>:5353"
    text = summary(_info(address, "0.0.0.0:9153", "http://0.0.0.0:8000/"), "tok")
    assert "dig @<this host's address> -p 5353" in text and not WILDCARD.search(text), text


@pytest.mark.parametrize(("dns", "hint"), [("127.0.0.1:5353", True), ("[::1]:5353", True), ("0.0.0.0:53", False)])
def test_a_loopback_resolver_says_devices_cannot_use_it(dns: str, hint: bool) -> None:
    """`make run` printed 'point clients here' for 127.0.0.1:5353, which no phone can reach (a newcomer's review)."""
    text = summary(_info(dns, "127.0.0.1:9153", "http://127.0.0.1:8000/"), "tok")
    assert ("this machine only: for devices, --dns-listen 0.0.0.0:53" in text) is hint, text
