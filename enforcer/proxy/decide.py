"""Pure decision helpers for the addon: no mitmproxy objects, no I/O, "now" passed in.

- ``Verdict`` / ``judge``: a policy ``Match`` plus the time and client -> blocked, monitored or allowed, asked of
  ``Policy.enforcement`` (the one owner of "on or after the effective date, not an exempt client").
- ``request_hosts``: every host an HTTP request names (destination, :authority, Host, the tunnel's CONNECT host and
  SNI), so a request cannot hide a blocked host behind an allowed one; ``BadHost`` for a request whose Host cannot be
  read one way only (two Host fields, ``a:80:80``, userinfo, a bad port): the addon answers it 400.
- ``authority_host``: the host of one Host/:authority value, strictly.
- ``match_request``: the URL/store/name decision for a request across those hosts; the blocking match wins.
- ``RequestMemo``: ``match_request`` remembered per (policy, scheme, hosts, port, path, method), bounded
  (``MEMO_SIZE`` entries, emptied when full; paths up to ``MEMO_MAX_PATH``), emptied when the policy object
  changes. The decision is a pure function of those; what depends on the client and the time (``judge``) is never
  remembered. The policy is held by a weak reference: a replaced one is not kept alive by the memo.
- ``ConnState``: what earlier hooks decided about one client connection; ``PendingPage``: a blocked CONNECT accepted
  to show the block page inside the tunnel, whose hit is recorded once, when its outcome is known.
- ``BLOCKED_CONNECT_MODES``: ``page`` (accept a blocked CONNECT, answer its first request with the block page) or
  ``refuse`` (403 on the CONNECT itself).
- ``client_address``: a peer address tuple -> ``ip_address`` (``%zone`` stripped; None when it is not an IP, e.g. a
  unix socket).
"""

from __future__ import annotations

import ipaddress
import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from enforcer.net import IPAddress, strip_zone
from enforcer.policy import Match, Policy
from enforcer.policy.urlrules import MAX_PATH

# Outcomes of enforcer_proxy_flows_total (bounded label values).
ALLOWED = "allowed"
BLOCKED = "blocked"
MONITORED = "monitored"
ERROR = "error"
INVALID = "invalid"
# A client refused the TLS handshake of a tunnel accepted to show the block page (it does not trust the enforcer CA:
# a pinned app, an unmanaged device). Still blocked; the hit is counted once, with tls.established false.
HANDSHAKE_FAILED = "handshake_failed"

PAGE, REFUSE = "page", "refuse"

# A repeated request (keep-alive polling, the same resource again) skips URL parsing and matching: ~40 us of the
# ~60 us the request hook took per allowed request (docs/performance.md, "the proxy addon against bare mitmdump").
# Bounded in entries and key size.
MEMO_SIZE = 4096
MEMO_MAX_PATH = 1024
BLOCKED_CONNECT_MODES = (PAGE, REFUSE)


class UnparsableRequest(ValueError):
    """No host of the request can be parsed into a URL: the addon refuses it rather than guess."""


class BadHost(ValueError):
    """A Host or :authority that different servers would read differently: refused with 400, never forwarded."""


class PathTooLong(ValueError):
    """A path longer than the url/store rules read (``urlrules.MAX_PATH``) to a host they may apply to: refused
    with 414, never forwarded (padding before the part that matters would otherwise put it past what is judged)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a flow: ``match`` is the winning rule (or None); ``enforced`` says whether it blocks,
    ``exempt`` whether the client is one of the app's exempt clients (the event says so)."""

    match: Match | None
    enforced: bool = False
    exempt: bool = False

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
class PendingPage:
    """A blocked CONNECT that was accepted (200) so that the block page can be shown inside the tunnel."""

    verdict: Verdict
    fields: dict[str, Any]  # event fields known at the CONNECT (host, destination, port)
    key: tuple[str, str]  # (client address, rule id): tunnels open side by side are one attempt
    recorded: bool = False  # the hit (blocked_total, one event) is recorded once per tunnel


@dataclass(slots=True)
class ConnState:
    """What earlier hooks decided about one client connection (kept only for connections that need it)."""

    refused: str | None = None  # why the upstream side must never be opened
    page: PendingPage | None = None  # a blocked CONNECT whose tunnel only ever carries the block page
    user: str | None = None  # the proxy login of this connection (mitmproxy's proxyauth), for user.name
    logged: set[str] = field(default_factory=set)  # "action|rule id" already logged as monitor hits here
    url_allowed: set[str] = field(default_factory=set)  # hosts an explicit url/store allow rule let through


def judge(policy: Policy, match: Match | None, at_us: int, client: IPAddress | None) -> Verdict:
    """The verdict on ``match`` for ``client`` at ``at_us`` (integer microseconds since the epoch)."""
    if match is None or not match.blocked:
        return Verdict(match) if match is not None else ALLOW
    enforced, exempt = policy.enforcement.decide(match.rule.app, client, at_us)
    return Verdict(match, enforced, exempt)


def client_address(peer: object) -> tuple[IPAddress | None, int | None]:
    """(ip, port) of a socket peer tuple; (None, None) for anything else."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        try:
            return ipaddress.ip_address(strip_zone(str(peer[0]))), int(peer[1])
        except ValueError:
            return None, None
    return None, None


# Characters that never belong in a host and that some server or library splits on (userinfo, path, query, escape,
# whitespace, a second port), and every control character: a Host holding one is read differently by different
# parsers, so it is refused. One regex search per host (it runs on every request; a per-character loop took ~4 us).
_BAD_HOST_CHAR = re.compile(r"[\x00-\x20\x7f@/\\?#%,]")


def authority_host(value: str) -> str | None:
    """The host of a Host header or :authority value (``host``, ``host:port``, ``[v6]``, ``[v6]:port``).

    None for an empty value; raises BadHost for anything with two readings.
    """
    v = value.strip(" \t")
    if not v:
        return None
    if v.startswith("["):
        end = v.find("]")
        host, rest = (v[1:end], v[end + 1 :]) if end > 0 else ("", "")
        if not host or ":" not in host:
            raise BadHost(f"malformed IPv6 authority {value[:100]!r}")
        if rest and not rest.startswith(":"):
            raise BadHost(f"junk after the IPv6 address in {value[:100]!r}")
        port = rest[1:]
    else:
        if v.count(":") > 1:
            raise BadHost(f"more than one ':' in {value[:100]!r}")
        host, _, port = v.partition(":")
        if not host:
            raise BadHost(f"no host in {value[:100]!r}")
        if _BAD_HOST_CHAR.search(host):
            raise BadHost(f"forbidden character in host {value[:100]!r}")
    if port and (not port.isascii() or not port.isdigit() or len(port) > 5 or int(port) > 65535):
        raise BadHost(f"bad port in {value[:100]!r}")
    return host


def request_hosts(
    destination: str, host_headers: Sequence[str] = (), authority: str = "", also: Iterable[str | None] = ()
) -> list[str]:
    """Every host a request names, the destination first, each once (compared without case or trailing dot).

    ``host_headers``: every Host field (more than one is BadHost, RFC 9112 section 3.2); ``authority``: the request
    target's authority or HTTP/2 ``:authority``; ``also``: hosts of the connection (CONNECT host, TLS SNI) that the
    origin may route on too.
    """
    if len(host_headers) > 1:
        raise BadHost(f"{len(host_headers)} Host header fields")
    hosts: list[str] = []
    seen: set[str] = set()

    def add(host: str | None) -> None:
        if host:
            key = host.lower().rstrip(".")
            if key not in seen:
                seen.add(key)
                hosts.append(host)

    add(destination)
    add(authority_host(authority) if authority else None)
    for value in host_headers:
        if value != authority:  # most requests carry the same text in both: read it once
            add(authority_host(value))
    for host in also:
        add(host)
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

    Raises UnparsableRequest when none of the hosts makes a URL the matcher can read, PathTooLong for a path
    longer than the url/store rules read to a host they may apply to.
    """
    size = path.find("?")
    size = len(path) if size < 0 else size
    if size > MAX_PATH and any(policy.has_url_rules(h, any_host=True) for h in hosts):
        raise PathTooLong(f"a path of {size} characters, over the {MAX_PATH} the URL rules read")
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


class RequestMemo:
    """``match_request`` remembered per request shape for one policy object (see the module docstring)."""

    __slots__ = ("_entries", "_policy", "hits", "misses")

    def __init__(self) -> None:
        # A weak reference: the memo must not keep a replaced policy (a 1M-name feed is tens of MB) alive until the
        # next request; a freed policy answers None, which is never the current one.
        self._policy: weakref.ref[Policy] | None = None
        self._entries: dict[tuple[str, tuple[str, ...], int | None, str, str], tuple[Match | None, str]] = {}
        self.hits = 0
        self.misses = 0

    def match(
        self, policy: Policy, scheme: str, hosts: Sequence[str], port: int | None, path: str, method: str
    ) -> tuple[Match | None, str]:
        """``match_request(policy, ...)``, from memory when the same request was decided under the same policy."""
        current = self._policy
        if current is None or current() is not policy:  # a reload swapped the policy: nothing decided still holds
            self._entries.clear()
            self._policy = weakref.ref(policy)
        if len(path) > MEMO_MAX_PATH:
            return match_request(policy, scheme, hosts, port, path, method)
        key = (scheme, tuple(hosts), port, path, method)
        entries = self._entries
        found = entries.get(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        found = match_request(policy, scheme, hosts, port, path, method)  # UnparsableRequest: raised, not kept
        if len(entries) >= MEMO_SIZE:
            # Full: start again. Dropping the oldest instead (``del entries[next(iter(entries))]``) made every miss
            # ~13 us dearer: a dict's first live entry is found by scanning past the deleted ones.
            entries.clear()
        entries[key] = found
        return found

    def __len__(self) -> int:
        return len(self._entries)
