"""The filter formats of ``enforcer export``: adblock (names and url rules), squid (layered dstdomain ACLs),
nftables (the blocked CIDRs as interval sets).

- One writer per format (``_adblock``, ``_squid``, ``_nftables``), listed in ``WRITERS``.
- ``effective_ranges(cidrs, version)``: the address space whose most specific CIDR rule is a block, minimal.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from .export_view import Context, has_underscore
from .model import IPNetwork, Rule
from .urlrules import ANY_HOST, UrlPattern

# -- adblock --------------------------------------------------------------------------------------------------------


_ADBLOCK_LEVEL = {0: "||{}^", 1: "@@||{}^", 2: "||{}^$important", 3: "@@||{}^$important"}


def _adblock(ctx: Context) -> tuple[list[str], list[str]]:
    policy, view, skips = ctx.policy, ctx.view, ctx.skips
    body: list[str] = []
    for name, _, level in view.layers():
        if level not in _ADBLOCK_LEVEL:
            skips.add("exception nested too deep for adblock priorities", name)
        elif has_underscore(name):
            skips.add("'_' in the name", name)
        else:
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


def _squid(ctx: Context) -> tuple[list[str], list[str]]:
    view = ctx.view
    levels: dict[int, list[str]] = {}
    for name, exact, level in view.layers():
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


def effective_ranges(cidrs: Iterable[tuple[IPNetwork, Rule]], version: int) -> list[IPNetwork]:
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
        intervals = _punch(intervals, start, end, rule.action == "block")
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


def _punch(intervals: list[tuple[int, int]], start: int, end: int, block: bool) -> list[tuple[int, int]]:
    """``intervals`` minus ``[start, end)``, plus it again when ``block``: a narrower rule overrides a wider one."""
    kept: list[tuple[int, int]] = []
    for a, b in intervals:
        if b <= start or a >= end:
            kept.append((a, b))
            continue
        if a < start:
            kept.append((a, start))
        if b > end:
            kept.append((end, b))
    if block:
        kept.append((start, end))
    return sorted(kept)


def _nftables(ctx: Context) -> tuple[list[str], list[str]]:
    body = [
        "# (re)load atomically: the empty declaration makes the delete valid on the first load",
        "table inet enforcer {}",
        "delete table inet enforcer",
        "table inet enforcer {",
    ]
    for version, name, typ in ((4, "blocked_v4", "ipv4_addr"), (6, "blocked_v6", "ipv6_addr")):
        nets = effective_ranges(ctx.cidrs(), version)
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


WRITERS: dict[str, Callable[[Context], tuple[list[str], list[str]]]] = {
    "adblock": _adblock,
    "squid": _squid,
    "nftables": _nftables,
}
