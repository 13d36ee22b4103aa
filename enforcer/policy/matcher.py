"""``Policy``: the one decision object both the resolver and the proxy addon ask.

- ``match_name(name)``: exact ``host`` rules, then ``domain``/``include`` suffixes from the longest to the shortest,
  on label boundaries. One dictionary look-up per label, so a lookup costs about a microsecond whatever the list size.
  Feeds of ``nameindex.COMPACT_MIN_NAMES`` names or more stay in a ``NameIndex`` (a third of the dict's memory)
  probed after the dict for each label, the whole walk in one call (``NameIndex.walker``); with one such feed (the
  usual case) ``match_name``/``match_key`` are ``NameIndex.lookups``' closures, the walk inlined and answering as the
  methods do. Smaller feeds are merged into the dict (docs/performance.md).
- ``match_url(url, method)``: ``url``/``store`` rules of the request's host (more specific than any name rule), then
  the host itself by name (or by address for an IP literal). The path is judged on every reading an origin may serve
  (``urlrules.request_paths``); a blocking reading wins.
- ``match_ip(addr, nat64_prefixes)``: ``cidr`` rules, longest prefix first. An IPv6 address that embeds an IPv4
  address (IPv4-mapped, NAT64, 6to4: ``addresses.embedded_ipv4``) is judged by an IPv6 rule if one covers it, else
  by the IPv4 rules for the address it embeds. A string goes through ``addresses.parse_ip_literal`` (every
  spelling glibc accepts).
- ``match_host(host)``: CONNECT/SNI/Host values; any IP literal spelling by address, anything else by name.

- ``control_apps`` / ``ban_apps``: the app ids of ``kind: control`` blocklists (bypass controls: they block but never
  make a device non-compliant) and of the others (the banned apps, e.g. what must be loaded).
- ``enforcement``: the ``enforcement.Enforcement`` table of this policy's apps: whether a block match is enforced
  (effective date, exempt clients), for a rule's app, a client and a time.

Precedence everywhere: the most specific rule wins; at equal specificity allow wins (resolved once, at build time,
for names). A ``Policy`` is immutable; reloading builds a new one and swaps the reference.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from .addresses import embedded_ipv4, parse_ip_literal
from .enforcement import Enforcement
from .model import AppPolicy, IPAddress, IPNetwork, Match, Rule
from .nameindex import COMPACT_MIN_NAMES, NameIndex
from .names import fast_key
from .urlrules import ParsedUrl, UrlIndex, UrlPattern, parse_request_url

# ``Match`` built from a ready tuple in C: ``Match(a, b, c)`` runs the NamedTuple's generated ``__new__`` (a Python
# frame), about 0.3 us more per hit of ``match_name`` (docs/performance.md, "the 1,000,000-name policy").
_match = tuple.__new__


@dataclass(frozen=True, slots=True)
class PolicyStats:
    apps: int
    rules_by_app_kind: Mapping[tuple[str, str], int]  # (app, kind) -> count; include counts its names
    names: int
    fingerprint: str


class CidrTable:
    """Longest-prefix match over a few hundred networks: one dict per prefix length present."""

    def __init__(self, entries: list[tuple[IPNetwork, Rule]]) -> None:
        self._v4: dict[int, dict[int, Rule]] = {}
        self._v6: dict[int, dict[int, Rule]] = {}
        for net, rule in entries:
            table = self._v4 if net.version == 4 else self._v6
            bucket = table.setdefault(net.prefixlen, {})
            key = int(net.network_address)
            # At equal prefix (the same network) allow wins.
            if key not in bucket or rule.action == "allow":
                bucket[key] = rule
        self._v4_lengths = sorted(self._v4, reverse=True)
        self._v6_lengths = sorted(self._v6, reverse=True)

    def lookup(self, addr: IPAddress, nat64_prefixes: Sequence[ipaddress.IPv6Network] = ()) -> tuple[Rule, str] | None:
        if isinstance(addr, ipaddress.IPv6Address):
            embedded = embedded_ipv4(addr, nat64_prefixes)
            if embedded is not None:
                # A rule written for the IPv6 range itself is the more specific statement; otherwise the traffic
                # ends at the embedded IPv4 address, so the IPv4 rules decide.
                return self._lookup(addr) or self._lookup(embedded)
        return self._lookup(addr)

    def _lookup(self, addr: IPAddress) -> tuple[Rule, str] | None:
        if addr.version == 4:
            table, lengths, bits = self._v4, self._v4_lengths, 32
        else:
            table, lengths, bits = self._v6, self._v6_lengths, 128
        value = int(addr)
        for plen in lengths:
            mask = ((1 << plen) - 1) << (bits - plen) if plen else 0
            rule = table[plen].get(value & mask)
            if rule is not None:
                return rule, f"{ipaddress.ip_address(value & mask)}/{plen}"
        return None


class Policy:
    """The loaded, validated blocklists. Build with ``enforcer.policy.load_policy``."""

    def __init__(
        self,
        apps: Mapping[str, AppPolicy],
        rules: tuple[Rule, ...],
        hosts: dict[str, Rule],
        domains: dict[str, Rule],
        urls: UrlIndex,
        cidrs: list[tuple[IPNetwork, Rule]],
        fingerprint: str,
        counts: Mapping[tuple[str, str], int],
        warnings: tuple[object, ...] = (),
        files: tuple[str, ...] = (),
        feeds: NameIndex | None = None,
    ) -> None:
        self.apps = dict(apps)
        self.enforcement = Enforcement(self.apps)
        self.control_apps = self.enforcement.controls
        self.ban_apps = frozenset(self.apps) - self.control_apps
        self.rules = rules
        self._hosts = hosts
        self._domains = domains
        # Include feeds (``domains`` already holds the explicit rules that win over a feed's listing of the same
        # name): merged into the dict when small, kept compact when large.
        self._feeds: NameIndex | None = None
        self._overlap = 0  # explicit names that a compact feed lists too (counted once in stats)
        if feeds is not None and len(feeds) >= COMPACT_MIN_NAMES:
            self._feeds = feeds
            self._overlap = sum(1 for name in domains if feeds.get(name) is not None)
        elif feeds is not None:
            for name, rule in feeds.items():
                domains.setdefault(name, rule)
        # One probe per suffix: the dict's own get (C), or the dict then the compact feeds.
        self._suffix_rule: Callable[[str], Rule | None] = (
            domains.get if self._feeds is None else self._feeds.after(domains.get)
        )
        # Whether any suffix rule is a single label ("cn"): without one, lookups skip the top-level label. Feeds
        # never list bare TLDs, so this usually saves one dictionary probe per query.
        self._tld_rules = any("." not in name for name in domains) or (
            self._feeds is not None and self._feeds.single_label
        )
        # With compact feeds, the whole suffix walk is one call into the table (nameindex.NameIndex.walker).
        self._walk = None if self._feeds is None else self._feeds.walker(domains.get, self._tld_rules)
        # One compact feed (the usual large policy): match_name and match_key with the walk inlined, one Python call
        # per lookup (NameIndex.lookups; the methods below answer the same and stay the reference).
        fused = None if self._feeds is None else self._feeds.lookups(hosts, domains, self.apps, self._tld_rules)
        if fused is not None:
            self.match_name = fused[0]  # type: ignore[method-assign,assignment]
            self.match_key = fused[1]  # type: ignore[method-assign,assignment]
        self.urls = urls
        self.cidrs = tuple(cidrs)
        self._cidr_table = CidrTable(cidrs)
        self.fingerprint = fingerprint
        self.counts = dict(counts)
        self.warnings = warnings
        self.files = files

    # -- decisions -------------------------------------------------------------------------------------------
    def match_name(self, name: str) -> Match | None:
        """Decide a DNS name (any case, with or without trailing dot, Unicode or punycode)."""
        # fast_key inlined (this runs once per DNS query), and the Match built as a plain tuple (``_match``).
        key = name.lower().removesuffix(".") if name.isascii() else fast_key(name)
        rule = self._hosts.get(key)
        if rule is not None:
            return _match(Match, (rule, self.apps[rule.app], key))
        if self._walk is not None:
            found = self._walk(key)
            if found is None:
                return None
            rule, matched = found
            return _match(Match, (rule, self.apps[rule.app], matched))
        get = self._suffix_rule
        rule = get(key)
        if rule is not None:
            return _match(Match, (rule, self.apps[rule.app], key))
        tld = self._tld_rules
        i = key.find(".")
        while i >= 0:
            j = key.find(".", i + 1)
            if j < 0 and not tld:
                return None  # the last label alone: no rule is that short
            suffix = key[i + 1 :]
            rule = get(suffix)
            if rule is not None:
                return _match(Match, (rule, self.apps[rule.app], suffix))
            i = j
        return None

    def match_key(self, key: str) -> Rule | None:
        """Hot-path variant of ``match_name`` for a name already lower-case without trailing dot (DNS wire)."""
        rule = self._hosts.get(key)
        if rule is not None:
            return rule
        if self._walk is not None:
            found = self._walk(key)
            return None if found is None else found[0]
        get = self._suffix_rule
        rule = get(key)
        if rule is not None:
            return rule
        tld = self._tld_rules
        i = key.find(".")
        while i >= 0:
            j = key.find(".", i + 1)
            if j < 0 and not tld:
                return None
            rule = get(key[i + 1 :])
            if rule is not None:
                return rule
            i = j
        return None

    def match_ip(self, addr: str | IPAddress, nat64_prefixes: Sequence[ipaddress.IPv6Network] = ()) -> Match | None:
        """Decide an IP address against the ``cidr`` rules. An unparsable address matches nothing.

        ``nat64_prefixes``: the site's NAT64 prefixes (RFC 6052 layouts) besides the well-known 64:ff9b::/96.
        """
        if isinstance(addr, str):
            parsed = parse_ip_literal(addr.strip())
            if parsed is None:
                return None
            addr = parsed
        found = self._cidr_table.lookup(addr, nat64_prefixes)
        if found is None:
            return None
        rule, net = found
        return Match(rule, self.apps[rule.app], net)

    def match_url(self, url: str | ParsedUrl, method: str | None = None) -> Match | None:
        """Decide an HTTP request: URL/store rules first (the most specific), then the host by name or address."""
        parsed = parse_request_url(url) if isinstance(url, str) else url
        if self.urls:
            # Every reading the origin may serve (urlrules.request_paths, either case): one that a block pattern
            # matches decides; otherwise the canonical reading does.
            first: UrlPattern | None = None
            for i, pattern in enumerate(self.urls.readings(parsed, method)):
                if pattern is None:
                    continue
                if pattern.rule.action == "block":
                    return Match(pattern.rule, self.apps[pattern.rule.app], pattern.text)
                if i == 0:
                    first = pattern
            if first is not None:
                return Match(first.rule, self.apps[first.rule.app], first.text)
        return self.match_host(parsed.host)

    def match_host(self, host: str) -> Match | None:
        """A host as seen in CONNECT, SNI or Host: an IP literal is checked against CIDRs, a name by name."""
        addr = parse_ip_literal(host)
        if addr is not None:
            return self.match_ip(addr)
        return self.match_name(host.strip("[]"))

    def has_url_rules(self, host: str, *, any_host: bool = False) -> bool:
        """Whether a url/store rule names ``host`` (or a ``*.suffix`` of it): the proxy decrypts only such hosts.

        Rules for any host (``*/mmtls/...``) are left out unless ``any_host``: they would make every TLS
        connection a decryption candidate.
        """
        return self.urls.has_host_rules(fast_key(host), any_host=any_host)

    # -- introspection (export, metrics, check) ---------------------------------------------------------------
    def name_entries(self) -> Iterator[tuple[str, Rule, bool]]:
        """Every DNS-level name: (name, rule, is_exact_host)."""
        for name, rule in self._hosts.items():
            yield name, rule, True
        domains = self._domains
        for name, rule in domains.items():
            yield name, rule, False
        if self._feeds is not None:
            for name, rule in self._feeds.items():
                if name not in domains:  # an explicit rule for the same name decides it
                    yield name, rule, False

    def stats(self) -> PolicyStats:
        return PolicyStats(len(self.apps), self.counts, self._name_count(), self.fingerprint)

    def _name_count(self) -> int:
        feeds = len(self._feeds) - self._overlap if self._feeds is not None else 0
        return len(self._hosts) + len(self._domains) + feeds

    def __repr__(self) -> str:
        names = self._name_count()
        return f"<Policy apps={sorted(self.apps)} names={names} fp={self.fingerprint[:12]}>"
