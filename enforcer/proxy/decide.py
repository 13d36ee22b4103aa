"""Pure decision helpers for the addon: no mitmproxy objects, no I/O, "now" passed in.

- ``Verdict`` / ``judge``: a policy ``Match`` plus the time and client -> blocked, monitored or allowed.
- ``request_hosts``: every host an HTTP request names (destination and Host header), so a request cannot hide a
  blocked host behind an allowed one.
- ``match_request``: the URL/store/name decision for a request across those hosts; the blocking match wins.
- ``ConnState``: what earlier hooks decided about one client connection.
- ``client_address``: a peer address tuple -> ``ip_address`` (None when it is not an IP, e.g. a unix socket).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from enforcer.policy import Match, Policy
from enforcer.policy.model import IPAddress

# Outcomes of enforcer_proxy_flows_total (bounded label values).
ALLOWED = "allowed"
BLOCKED = "blocked"
MONITORED = "monitored"
ERROR = "error"
INVALID = "invalid"


class UnparsableRequest(ValueError):
    """No host of the request can be parsed into a URL: the addon refuses it rather than guess."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a flow: ``match`` is the winning rule (or None); ``enforced`` says whether it blocks."""

    match: Match | None
    enforced: bool = False

    @property
    def blocked(self) -> bool:
        return self.enforced

    @property
    def monitored(self) -> bool:
        """A block rule matched but is not enforced (before the effective date, exempt client): log, let through."""
        return self.match is not None and self.match.blocked and not self.enforced

    @property
    def outcome(self) -> str:
        return BLOCKED if self.enforced else MONITORED if self.monitored else ALLOWED


ALLOW = Verdict(None)


@dataclass(slots=True)
class ConnState:
    """What earlier hooks decided about one client connection (kept only for connections that need it)."""

    refused: str | None = None  # why the upstream side must never be opened
    logged: set[str] = field(default_factory=set)  # "action|rule id" already logged as monitor hits here
    url_allowed: set[str] = field(default_factory=set)  # hosts an explicit url/store allow rule let through


def judge(match: Match | None, now: datetime, client: IPAddress | None) -> Verdict:
    if match is None or not match.blocked:
        return Verdict(match) if match is not None else ALLOW
    return Verdict(match, match.enforced(now, client))


def client_address(peer: object) -> tuple[IPAddress | None, int | None]:
    """(ip, port) of a socket peer tuple; (None, None) for anything else."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        try:
            return ipaddress.ip_address(str(peer[0]).split("%", 1)[0]), int(peer[1])
        except ValueError:
            return None, None
    return None, None


def request_hosts(destination: str, host_header: str | None) -> list[str]:
    """The destination host, then the Host/:authority host when it differs (without its port)."""
    hosts = [destination] if destination else []
    if host_header:
        h = host_header.strip()
        if h.startswith("["):
            h = h[1 : h.find("]")] if "]" in h else h[1:]
        elif h.count(":") == 1:
            h = h.split(":", 1)[0]
        if h and h.lower() != destination.lower():
            hosts.append(h)
    return hosts


def url_for(scheme: str, host: str, port: int | None, path: str) -> str:
    """An absolute URL for the matcher (and for url.full in events)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    default = 443 if scheme == "https" else 80
    authority = shown if port in (None, default) else f"{shown}:{port}"
    if not path.startswith("/"):
        path = "/" + path if path and path != "*" else "/"
    return f"{scheme}://{authority}{path}"


def match_request(
    policy: Policy, scheme: str, hosts: Iterable[str], port: int | None, path: str, method: str
) -> tuple[Match | None, str]:
    """Decide a request against each host it names. Returns (match, url): a block match wins over allow/none.

    Raises UnparsableRequest when none of the hosts makes a URL the matcher can read.
    """
    first: tuple[Match | None, str] | None = None
    for host in hosts:
        url = url_for(scheme, host, port, path)
        try:
            match = policy.match_url(url, method)
        except ValueError:
            continue
        if match is not None and match.blocked:
            return match, url
        if first is None:
            first = (match, url)
    if first is None:
        raise UnparsableRequest(f"no parsable host in {list(hosts)!r}")
    return first
