"""Export the policy for other software, in a form each one loads as is.

- ``export_policy(policy, fmt, *, zone, mode, now)``: the one entry point; ``FORMATS`` lists the formats.
- ``_NameView``: the policy's DNS names as two tables (exact hosts, suffix domains) plus the two questions every
  format asks of a name: its own verdict (``apex``) and the verdict of a name below it with no rule of its own
  (``subtree``), and its nesting level (block = even, allow exception = odd) for formats that layer lists.
- One writer per format (``_rpz``, ``_unbound``, ``_dnsmasq``, ``_hosts``, ``_domains``, ``_adblock``, ``_squid``,
  ``_nftables``); each returns body lines and the notes for its header.
- ``_header``: every export opens with the policy fingerprint, the generation time and what the format could not
  express (skipped names are counted there, never written half-valid).

Precedence (CONTRACT): the most specific rule wins, at equal specificity allow wins. Where a target cannot express a
nuance (an exact host in dnsmasq, suffixes in a hosts file) the header says what it does instead.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .matcher import Policy
from .model import IPNetwork, Rule
from .urlrules import ANY_HOST, UrlPattern

FORMATS = ("rpz", "hosts", "domains", "dnsmasq", "unbound", "adblock", "squid", "nftables")
MODES = ("nxdomain", "nodata", "null", "refused", "ip:ADDR[,ADDR6]")

# Which --mode each DNS format can answer with; the others ignore --mode.
_MODES_OF = {
    "rpz": ("nxdomain", "nodata", "null", "ip"),
    "unbound": ("nxdomain", "nodata", "null", "refused", "ip"),
    "dnsmasq": ("nxdomain", "null", "ip"),
    "hosts": ("nxdomain", "null", "ip"),
}
_COMMENT = {"rpz": ";", "adblock": "!"}
_RPZ_SPECIAL_TLDS = {"rpz-ip", "rpz-nsip", "rpz-nsdname", "rpz-client-ip"}
_MAX_NAME = 253
_SKIP_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class Mode:
    """A parsed ``--mode``: nxdomain, nodata, null, refused, or ip with an IPv4 and/or IPv6 sinkhole address."""

    kind: str
    v4: str | None = None
    v6: str | None = None

    @property
    def addresses(self) -> tuple[str | None, str | None]:
        if self.kind == "null":
            return "0.0.0.0", "::"
        return self.v4, self.v6


def parse_mode(mode: str) -> Mode:
    """``nxdomain``, ``nodata``, ``null``, ``refused`` or ``ip:ADDR[,ADDR6]``; ValueError with the reason otherwise."""
    m = mode.strip().lower()
    if m in ("nxdomain", "nodata", "null", "refused"):
        return Mode(m)
    if m.startswith("ip:"):
        v4 = v6 = None
        for part in m[3:].split(","):
            try:
                addr = ipaddress.ip_address(part.strip())
            except ValueError:
                raise ValueError(f"mode {mode!r}: {part.strip()!r} is not an IP address") from None
            if addr.version == 4 and v4 is None:
                v4 = str(addr)
            elif addr.version == 6 and v6 is None:
                v6 = str(addr)
            else:
                raise ValueError(f"mode {mode!r}: give at most one IPv4 and one IPv6 address")
        return Mode("ip", v4, v6)
    raise ValueError(f"unknown mode {mode!r} (expected one of: {', '.join(MODES)})")


# -- the policy's names as the formats see them ---------------------------------------------------------------------


class _NameView:
    def __init__(self, policy: Policy, monitor: frozenset[str] = frozenset()) -> None:
        self.hosts: dict[str, Rule] = {}
        self.domains: dict[str, Rule] = {}
        as_exception = _monitor_rules(monitor)
        for name, rule, exact in policy.name_entries():
            (self.hosts if exact else self.domains)[name] = as_exception(rule)
        self._levels: dict[str, int | None] = {}

    def names(self) -> list[str]:
        """Every name with a rule, sorted so that a parent comes before its children and output is stable."""
        return sorted(self.hosts.keys() | self.domains.keys(), key=_sort_key)

    def verdicts(self, name: str) -> tuple[Rule | None, Rule | None]:
        """(apex, subtree) of ``name`` with one walk up the domain table."""
        sub = self.subtree(name)
        return self.hosts.get(name) or sub, sub

    def covering(self, name: str, include_self: bool) -> tuple[str, Rule] | None:
        """The closest ``domain`` rule at ``name`` (if ``include_self``) or above it, on label boundaries."""
        domains = self.domains
        if include_self:
            rule = domains.get(name)
            if rule is not None:
                return name, rule
        i = name.find(".")
        while i >= 0:
            suffix = name[i + 1 :]
            rule = domains.get(suffix)
            if rule is not None:
                return suffix, rule
            i = name.find(".", i + 1)
        return None

    def subtree(self, name: str) -> Rule | None:
        """The rule deciding a name below ``name`` that has no rule of its own."""
        found = self.covering(name, True)
        return found[1] if found else None

    def apex(self, name: str) -> Rule | None:
        """The rule deciding ``name`` itself (what ``Policy.match_name`` returns)."""
        return self.hosts.get(name) or self.subtree(name)

    def level(self, name: str, exact: bool) -> int | None:
        """Nesting level of a rule: 0 for a block with nothing above it, +1 at each switch between block and allow.

        None for an allow rule that no block rule covers (it changes nothing). Blocks are even, allows odd, so a
        layered target (squid http_access lines, adblock $important) can express exceptions inside exceptions.
        """
        rule = self.hosts[name] if exact else self.domains[name]
        if not exact and name in self._levels:
            return self._levels[name]
        cover = self.covering(name, include_self=exact)
        parent = None if cover is None else self.level(cover[0], False)
        if parent is None:
            level = 0 if rule.action == "block" else None
        else:
            level = parent + (0 if rule.action == cover[1].action else 1)  # type: ignore[index]
        if not exact:
            self._levels[name] = level
        return level

    def redundant(self, name: str, exact: bool) -> bool:
        """True when a covering domain rule at the same level already expresses this rule in a layered list."""
        cover = self.covering(name, include_self=exact)
        return cover is not None and self.level(cover[0], False) == self.level(name, exact)


def _sort_key(name: str) -> str:
    # The name read backwards: names group by registrable domain and a parent sorts before its children. A string
    # key, not a tuple of labels: sorting a million names takes a fraction of a second instead of seconds.
    return name[::-1]


@dataclass
class _Skips:
    """Names a format cannot express, counted per reason, with a few examples for the header."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, name: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < _SKIP_EXAMPLES:
            ex.append(name)

    def notes(self) -> list[str]:
        out = []
        for reason, n in sorted(self.counts.items()):
            entries = "entry" if n == 1 else "entries"
            out.append(f"skipped {n} {entries} ({reason}), e.g. {', '.join(self.examples[reason])}")
        return out


def _monitor_rules(monitor: frozenset[str]) -> Callable[[Rule], Rule]:
    """Rule -> the rule as exported: a block rule of an app still in monitor mode (before its effective date) is
    written as an exception, since at run time such a hit is logged and let through, whatever it is inside."""
    if not monitor:
        return lambda rule: rule
    memo: dict[int, Rule] = {}  # one include rule stands for a million names: replace it once

    def convert(rule: Rule) -> Rule:
        if rule.app not in monitor or rule.action != "block":
            return rule
        new = memo.get(id(rule))
        if new is None:
            new = memo[id(rule)] = dataclasses.replace(rule, action="allow")
        return new

    return convert


@dataclass(frozen=True, slots=True)
class _Context:
    policy: Policy
    view: _NameView
    skips: _Skips
    mode: Mode
    zone: str
    when: datetime
    monitor: frozenset[str] = frozenset()

    def cidrs(self) -> list[tuple[IPNetwork, Rule]]:
        convert = _monitor_rules(self.monitor)
        return [(net, convert(rule)) for net, rule in self.policy.cidrs]


def _has_underscore(name: str) -> bool:
    return "_" in name


# -- entry point ----------------------------------------------------------------------------------------------------


def _context(policy: Policy, fmt: str, zone: str, mode: str, now: datetime | None) -> _Context:
    parsed = parse_mode(mode)
    allowed = _MODES_OF.get(fmt)
    if allowed is not None and parsed.kind not in allowed:
        raise ValueError(f"mode {mode!r} is not supported by the {fmt} format (use one of: {', '.join(allowed)})")
    when = (now or datetime.now(UTC)).astimezone(UTC)
    # Apps whose effective date is still ahead are in monitor mode: nothing of theirs may be blocked yet.
    monitor = frozenset(app for app, a in policy.apps.items() if when < a.effective)
    view = _NameView(policy, monitor)
    return _Context(policy, view, _Skips(), parsed, _check_zone(zone) if fmt == "rpz" else zone, when, monitor)


def export_policy(
    policy: Policy,
    fmt: str,
    *,
    zone: str = "rpz.enforcer.",
    mode: str = "nxdomain",
    now: datetime | None = None,
) -> str:
    """Render ``policy`` in ``fmt``. ValueError for an unknown format, a bad zone or a mode the format lacks."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (expected one of: {', '.join(FORMATS)})")
    ctx = _context(policy, fmt, zone, mode, now)
    monitor, when, parsed = ctx.monitor, ctx.when, ctx.mode
    body, notes = _WRITERS[fmt](ctx)
    exempt = [
        f"{app}: {', '.join(map(str, a.exempt_clients))}" for app, a in sorted(policy.apps.items()) if a.exempt_clients
    ]
    if exempt and fmt != "domains":
        # Per-app client exceptions exist only in the enforcer itself (the resolver and the proxy).
        notes = [f"exempt clients are not expressible here and are blocked like any other: {'; '.join(exempt)}", *notes]
    if monitor:
        pending = ", ".join(f"{app} (effective {policy.apps[app].effective.isoformat()})" for app in sorted(monitor))
        notes = [
            f"monitor mode at generation time: {pending}: their block rules are written as exceptions",
            "(nothing of theirs is blocked yet); export again once the effective date has passed.",
            *notes,
        ]
    header = _header(policy, fmt, when, notes + ctx.skips.notes(), parsed if fmt in _MODES_OF else None)
    return "\n".join(header + body) + "\n"


def _header(policy: Policy, fmt: str, when: datetime, notes: list[str], mode: Mode | None) -> list[str]:
    c = _COMMENT.get(fmt, "#")
    lines = [
        f"{c} enforcer export, format {fmt}" + (f", mode {mode.kind}" if mode is not None else ""),
        f"{c} policy fingerprint: {policy.fingerprint}",
        f"{c} generated: {when.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        f"{c} apps: {', '.join(sorted(policy.apps)) or '(none)'}",
    ]
    for note in notes:
        for line in note.splitlines():
            lines.append(f"{c} {line}".rstrip())
    return lines


def _check_zone(zone: str) -> str:
    from .names import InvalidName, normalize_name

    try:
        return normalize_name(zone) + "."
    except InvalidName as exc:
        raise ValueError(f"--zone {zone!r}: {exc}") from None


# -- rpz ------------------------------------------------------------------------------------------------------------


def _rpz_action(rule: Rule, mode: Mode) -> list[tuple[str, str]]:
    """(type, rdata) of the policy action for one trigger."""
    if rule.action == "allow":
        return [("CNAME", "rpz-passthru.")]
    if mode.kind == "nxdomain":
        return [("CNAME", ".")]
    if mode.kind == "nodata":
        return [("CNAME", "*.")]
    v4, v6 = mode.addresses
    out = []
    if v4:
        out.append(("A", v4))
    if v6:
        out.append(("AAAA", v6))
    return out


def rpz_ip_trigger(net: IPNetwork) -> str:
    """``32.0.0.0.10.rpz-ip`` for 10.0.0.0/32; IPv6 words reversed, the ``::`` run written ``zz``."""
    if net.version == 4:
        octets = str(net.network_address).split(".")
        return f"{net.prefixlen}.{'.'.join(reversed(octets))}.rpz-ip"
    text = net.network_address.compressed
    if "::" in text:
        left, right = text.split("::", 1)
        words = [w for w in left.split(":") if w] + ["zz"] + [w for w in right.split(":") if w]
    else:
        words = text.split(":")
    return f"{net.prefixlen}.{'.'.join(reversed(words))}.rpz-ip"


def rpz_records(
    policy: Policy, *, zone: str = "rpz.enforcer.", mode: str = "nxdomain", now: datetime | None = None
) -> list[tuple[str, str, str]]:
    """The zone's policy records as (owner relative to the zone, type, rdata), without SOA/NS.

    The one source of RPZ content: the ``rpz`` export renders it as a zone file, the RPZ feed serves it by AXFR/IXFR.
    """
    return _rpz_triggers(_context(policy, "rpz", zone, mode, now))


def _rpz_triggers(ctx: _Context) -> list[tuple[str, str, str]]:
    view, skips, zone, mode = ctx.view, ctx.skips, ctx.zone, ctx.mode
    address_data = mode.kind in ("null", "ip")
    room = _MAX_NAME - len(zone)  # owner text + "." + zone must fit a DNS name
    out: list[tuple[str, str, str]] = []

    def emit(owner: str, rule: Rule) -> None:
        for rtype, rdata in _rpz_action(rule, mode):
            out.append((owner, rtype, rdata))

    for name in view.names():
        if name.rsplit(".", 1)[-1] in _RPZ_SPECIAL_TLDS:
            skips.add("ends in an RPZ trigger label", name)
            continue
        # BIND's check-names (fail for primary zones) rejects '_' in owners of address records.
        if address_data and _has_underscore(name):
            skips.add("'_' in a name that would own A/AAAA records", name)
            continue
        apex = view.hosts.get(name) or view.domains.get(name)
        assert apex is not None
        if len(name) + 1 > room:
            skips.add("too long below the RPZ zone name", name)
            continue
        emit(name, apex)
        sub = view.domains.get(name)
        if sub is not None:
            if len(name) + 3 > room:
                skips.add("wildcard too long below the RPZ zone name", name)
                continue
            emit(f"*.{name}", sub)
    for net, rule in _dedupe_cidrs(ctx.cidrs()):
        # An rpz-ip trigger replaces answers of its own family: Unbound rejects AAAA data on an IPv4 trigger.
        family = "A" if net.version == 4 else "AAAA"
        for rtype, rdata in _rpz_action(rule, mode):
            if rtype in ("A", "AAAA") and rtype != family:
                continue
            out.append((rpz_ip_trigger(net), rtype, rdata))
    return out


def _rpz(ctx: _Context) -> tuple[list[str], list[str]]:
    zone = ctx.zone
    serial = int(ctx.when.timestamp()) % (2**32)
    body = [
        f"$ORIGIN {zone}",
        "$TTL 60",
        f"@ SOA localhost. hostmaster.localhost. {serial} 3600 600 604800 60",
        "@ NS localhost.",
    ]
    body.extend(f"{owner} {rtype} {rdata}" for owner, rtype, rdata in _rpz_triggers(ctx))
    notes = [
        f"Response Policy Zone {zone}: QNAME triggers (a domain rule is NAME plus *.NAME, an exact host NAME only),",
        "rpz-ip triggers for the CIDR rules (BIND applies them to answer addresses), allow exceptions as rpz-passthru.",
        f'BIND: zone "{zone}" {{ type primary; file "FILE"; }};',
        f'      options {{ response-policy {{ zone "{zone}"; }}; }};',
        f'Unbound: rpz:\\n  name: "{zone}"\\n  zonefile: "FILE"   (module-config: "respip validator iterator")',
        "url/store rules need the HTTP request and are not exported (they act in the proxy).",
        "enforcer dns --rpz-zone serves the same records by AXFR/IXFR with NOTIFY (docs/scale.md).",
    ]
    return body, [n.replace("\\n", "\n") for n in notes]


def _dedupe_cidrs(cidrs: Iterable[tuple[IPNetwork, Rule]]) -> list[tuple[IPNetwork, Rule]]:
    """One rule per network, allow winning at the same network (as in the matcher), sorted."""
    best: dict[IPNetwork, Rule] = {}
    for net, rule in cidrs:
        if net not in best or rule.action == "allow":
            best[net] = rule
    return sorted(best.items(), key=lambda item: (item[0].version, item[0]))


# -- unbound --------------------------------------------------------------------------------------------------------


def _unbound(ctx: _Context) -> tuple[list[str], list[str]]:
    view, mode = ctx.view, ctx.mode
    block_type = {
        "nxdomain": "always_nxdomain",
        "nodata": "always_nodata",
        "null": "always_null",
        "refused": "always_refuse",
        "ip": "redirect",
    }[mode.kind]
    exact_possible = mode.kind in ("null", "ip")
    v4, v6 = mode.addresses
    body = ["server:"]

    def data(name: str) -> None:
        if v4:
            body.append(f'local-data: "{name}. A {v4}"')
        if v6:
            body.append(f'local-data: "{name}. AAAA {v6}"')

    for name in view.names():
        apex, sub = view.verdicts(name)
        apex_block = apex is not None and apex.action == "block"
        sub_block = sub is not None and sub.action == "block"
        if sub_block and apex_block:
            body.append(f'local-zone: "{name}." {block_type}')
            if mode.kind == "ip":
                data(name)
        elif apex_block:
            # An exact host with nothing blocked below it.
            if exact_possible:
                # A transparent zone answers its own name from local-data (other types: NODATA) and resolves
                # the names below it normally: exactly one name blocked.
                body.append(f'local-zone: "{name}." transparent')
                data(name)
            else:
                body.append(f'local-zone: "{name}." {block_type}')
        else:
            # Allow exception: the most specific local-zone wins in unbound, so this zone overrides a blocking
            # parent for the name and (unavoidably, for an exact allowed host) the names below it.
            body.append(f'local-zone: "{name}." {"always_transparent" if not sub_block else "transparent"}')
    notes = [
        'include from unbound.conf:  include: "FILE"   (the snippet opens its own server: clause)',
        "a domain rule is a local-zone (the name and all below it); the most specific local-zone wins, so allow",
        "exceptions are transparent zones inside the blocked ones.",
    ]
    if not exact_possible:
        notes.append("unbound cannot answer this mode for one name only: names below an exact host are blocked too.")
    notes.append("an allowed exact host also allows the names below it (unbound has no exact-only zone).")
    return body, notes


# -- dnsmasq --------------------------------------------------------------------------------------------------------


def _dnsmasq(ctx: _Context) -> tuple[list[str], list[str]]:
    view, mode = ctx.view, ctx.mode
    v4, v6 = mode.addresses
    body: list[str] = []
    for name in view.names():
        apex, sub = view.verdicts(name)
        if apex is not None and apex.action == "block":
            if mode.kind == "nxdomain":
                body.append(f"address=/{name}/")
            else:
                if v4:
                    body.append(f"address=/{name}/{v4}")
                if v6:
                    body.append(f"address=/{name}/{v6}")
        elif sub is None or sub.action == "allow" or view.hosts.get(name) is not None:
            # '#' = "use the standard servers": the more specific domain wins over a blocking parent.
            body.append(f"server=/{name}/#")
    notes = [
        "load with: conf-file=FILE (or drop it into /etc/dnsmasq.d/); dnsmasq matches the most specific domain.",
        "address=/NAME/ covers NAME and every name below it: exact hosts block the names below them too, and",
        "allow exceptions (server=/NAME/#, forwarded as usual) cover the names below them.",
    ]
    return body, notes


# -- hosts / domains ------------------------------------------------------------------------------------------------


def _hosts(ctx: _Context) -> tuple[list[str], list[str]]:
    view, skips, mode = ctx.view, ctx.skips, ctx.mode
    v4, v6 = mode.addresses if mode.kind != "nxdomain" else ("0.0.0.0", None)
    body: list[str] = []
    for name in view.names():
        apex = view.apex(name)
        if apex is None or apex.action != "block":
            continue
        if _has_underscore(name):
            skips.add("'_' is not allowed in host names", name)
            continue
        if v4:
            body.append(f"{v4} {name}")
        if v6:
            body.append(f"{v6} {name}")
    notes = [
        "a hosts file lists exact names only: it cannot express domain suffixes, so names below a blocked",
        "domain (e.g. sub.NAME) are NOT covered; use the dnsmasq, unbound or rpz export for full coverage.",
        "hosts files cannot answer NXDOMAIN: blocked names point to the sinkhole address.",
    ]
    return body, notes


def _domains(ctx: _Context) -> tuple[list[str], list[str]]:
    view = ctx.view
    body: list[str] = []
    exceptions: list[str] = []
    for name in view.names():
        apex = view.apex(name)
        if apex is not None and apex.action == "block":
            body.append(name)
        elif view.level(name, name in view.hosts) is not None:
            exceptions.append(name)
    notes = ["one blocked name per line (domain rules: the name and, for suffix-aware consumers, the names below it)."]
    if exceptions:
        notes.append("allow exceptions (not expressible in this format): " + ", ".join(exceptions[:50]))
    return body, notes


# -- adblock --------------------------------------------------------------------------------------------------------


_ADBLOCK_LEVEL = {0: "||{}^", 1: "@@||{}^", 2: "||{}^$important", 3: "@@||{}^$important"}


def _adblock(ctx: _Context) -> tuple[list[str], list[str]]:
    policy, view, skips = ctx.policy, ctx.view, ctx.skips
    body: list[str] = []
    for name in view.names():
        for exact in (False, True):
            if name not in (view.hosts if exact else view.domains):
                continue
            level = view.level(name, exact)
            if level is None or view.redundant(name, exact):
                continue
            if level not in _ADBLOCK_LEVEL:
                skips.add("exception nested too deep for adblock priorities", name)
                continue
            if _has_underscore(name):
                skips.add("'_' in the name", name)
                continue
            body.append(_ADBLOCK_LEVEL[level].format(name))
    urls = 0
    unexpressed: dict[str, None] = {}
    for pattern in policy.urls.patterns:
        if pattern.rule.app in ctx.monitor and pattern.rule.action == "block":
            continue  # monitor mode: not blocked yet
        line = _adblock_url(pattern)
        if line is None:
            unexpressed[pattern.rule.id] = None  # a store rule expands to several patterns: count it once
            continue
        body.append(line)
        urls += 1
    for rid in unexpressed:
        skips.add("url/store rule with a query, method, any-host or class glob: enforced by the proxy only", rid)
    notes = [
        "||NAME^ blocks NAME and the names below it (exact hosts too); @@ marks allow exceptions, $important",
        f"keeps blocks nested inside an exception. {urls} url rule(s) as URL filters.",
    ]
    return body, notes


def _adblock_url(p: UrlPattern) -> str | None:
    """A url rule as an adblock URL filter, when it has no query, no method and a path glob with only '*'."""
    rule = p.rule
    if rule.kind != "url" or rule.method is not None or p.query or p.host == ANY_HOST:
        return None
    value = rule.value.split("://", 1)[-1]
    path = value.partition("/")[2]
    if any(ch in path for ch in "?[]|^") or " " in path or "$" in path:
        return None
    host = p.host[2:] if p.host.startswith("*.") else p.host
    prefix = f"|{p.scheme}://" if p.scheme else "||"
    if p.scheme and p.host.startswith("*."):
        return None  # |http://*.x would also match other hosts ending in x
    text = f"{prefix}{host}/{path}"
    if not path.endswith("*"):
        text += "^"
    return ("@@" if rule.action == "allow" else "") + text


# -- squid ----------------------------------------------------------------------------------------------------------


def _squid(ctx: _Context) -> tuple[list[str], list[str]]:
    view = ctx.view
    levels: dict[int, list[str]] = {}
    for name in view.names():
        for exact in (False, True):
            if name not in (view.hosts if exact else view.domains):
                continue
            level = view.level(name, exact)
            if level is None or view.redundant(name, exact):
                continue
            levels.setdefault(level, []).append(name if exact else "." + name)
    body = levels.pop(0, [])
    notes = [
        "squid.conf (dstdomain: .NAME = NAME and the names below it, NAME = that host only):",
        '  acl enforcer_block dstdomain "/etc/squid/enforcer-block.acl"   # this file',
    ]
    rules = []
    for level in sorted(levels):
        names = levels[level]
        acl = f"enforcer_{'allow' if level % 2 else 'block'}_{level}"
        for i in range(0, len(names), 8):
            notes.append(f"  acl {acl} dstdomain {' '.join(names[i : i + 8])}")
    # Deny each block layer unless the exception layer just inside it applies: most specific wins.
    block_layers = [0, *sorted(lv for lv in levels if lv % 2 == 0)]
    for lv in block_layers:
        block_acl = "enforcer_block" if lv == 0 else f"enforcer_block_{lv}"
        exc = f" !enforcer_allow_{lv + 1}" if lv + 1 in levels else ""
        rules.append(f"  http_access deny {block_acl}{exc}")
    notes.extend(reversed(rules))
    notes.append("url/store rules need the request path and are enforced by the enforcer proxy, not this list.")
    return body, notes


# -- nftables -------------------------------------------------------------------------------------------------------


def _effective_ranges(cidrs: Iterable[tuple[IPNetwork, Rule]], version: int) -> list[IPNetwork]:
    """The address space whose most specific CIDR rule is a block, as a minimal list of networks.

    Networks are applied from the widest to the narrowest (at the same network block before allow), so a narrower
    allow punches a hole into a wider block and a narrower block inside that hole fills it again.
    """
    bits = 32 if version == 4 else 128
    items = sorted(
        ((net, rule) for net, rule in cidrs if net.version == version),
        key=lambda it: (it[0].prefixlen, it[1].action == "allow"),
    )
    intervals: list[tuple[int, int]] = []  # sorted, disjoint [start, end)
    for net, rule in items:
        start = int(net.network_address)
        end = start + (1 << (bits - net.prefixlen))
        kept: list[tuple[int, int]] = []
        for a, b in intervals:  # subtract [start, end)
            if b <= start or a >= end:
                kept.append((a, b))
                continue
            if a < start:
                kept.append((a, start))
            if b > end:
                kept.append((end, b))
        if rule.action == "block":
            kept.append((start, end))
        intervals = sorted(kept)
    merged: list[tuple[int, int]] = []
    for a, b in intervals:  # adjacent pieces from different rules become one range
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    nets: list[IPNetwork] = []
    for a, b in merged:
        if version == 4:
            nets.extend(ipaddress.summarize_address_range(ipaddress.IPv4Address(a), ipaddress.IPv4Address(b - 1)))
        else:
            nets.extend(ipaddress.summarize_address_range(ipaddress.IPv6Address(a), ipaddress.IPv6Address(b - 1)))
    return nets


def _nftables(ctx: _Context) -> tuple[list[str], list[str]]:
    body = [
        "# (re)load atomically: the empty declaration makes the delete valid on the first load",
        "table inet enforcer {}",
        "delete table inet enforcer",
        "table inet enforcer {",
    ]
    for version, name, typ in ((4, "blocked_v4", "ipv4_addr"), (6, "blocked_v6", "ipv6_addr")):
        nets = _effective_ranges(ctx.cidrs(), version)
        body.append(f"\tset {name} {{")
        body.append(f"\t\ttype {typ}")
        body.append("\t\tflags interval")
        if nets:
            body.append("\t\telements = {")
            body.extend(f"\t\t\t{net}," for net in nets)
            body.append("\t\t}")
        body.append("\t}")
    body.append("}")
    notes = [
        "nftables sets of the blocked CIDRs (allow exceptions already subtracted). Load: nft -f FILE. A set is",
        "visible to the chains of its own table, e.g.:",
        "  nft add chain inet enforcer fwd '{ type filter hook forward priority 0; }'",
        "  nft add rule inet enforcer fwd ip daddr @blocked_v4 reject",
        "  nft add rule inet enforcer fwd ip6 daddr @blocked_v6 reject",
    ]
    return body, notes


_WRITERS: dict[str, Callable[[_Context], tuple[list[str], list[str]]]] = {
    "rpz": _rpz,
    "unbound": _unbound,
    "dnsmasq": _dnsmasq,
    "hosts": _hosts,
    "domains": _domains,
    "adblock": _adblock,
    "squid": _squid,
    "nftables": _nftables,
}
