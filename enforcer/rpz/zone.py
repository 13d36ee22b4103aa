"""The policy's DNS rules as Response Policy Zone (RPZ) records, one function shared by the export and the feed.

QNAME triggers: a ``domain`` (and every ``include`` name) gives ``name`` and ``*.name``; a ``host`` gives ``name``;
allow exceptions give ``rpz-passthru.``. CIDR rules give ``rpz-ip`` triggers (response IP policy) so BIND/Unbound
replace answers that point into banned address space, like the resolver's response policy does.

RPZ engines prefer an exact owner over a wildcard and a longer wildcard over a shorter one, which is the policy's own
"most specific rule wins" order; at one owner, an exact ``host`` rule overrides a ``domain`` rule, as in the matcher.

Actions per ``--mode``: ``nxdomain`` -> ``CNAME .``; ``nodata`` -> ``CNAME *.``; ``null`` -> local data ``A 0.0.0.0``
and ``AAAA ::``; ``ip:A[,A6]`` -> local data; ``refused`` has no RPZ action and is exported as ``nxdomain``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime

from ..policy.matcher import Policy

PASSTHRU = ("CNAME", "rpz-passthru.")


@dataclass(frozen=True, slots=True, order=True)
class RpzRecord:
    owner: str  # relative to the zone apex, e.g. "weixin.qq.com", "*.weixin.qq.com", "21.0.176.74.77.rpz-ip"
    rtype: str
    rdata: str


def mode_actions(mode: str) -> tuple[tuple[str, str], ...]:
    """The RPZ record(s) that express a blocked answer in ``mode``. Raises ValueError for an unknown mode."""
    if mode in ("nxdomain", "refused"):
        return (("CNAME", "."),)
    if mode == "nodata":
        return (("CNAME", "*."),)
    if mode == "null":
        return (("A", "0.0.0.0"), ("AAAA", "::"))
    if mode.startswith("ip:"):
        out = []
        for part in mode[3:].split(","):
            addr = ipaddress.ip_address(part.strip())
            out.append(("A" if addr.version == 4 else "AAAA", str(addr)))
        if not out:
            raise ValueError(f"mode {mode!r} names no address")
        return tuple(out)
    raise ValueError(f"unknown mode {mode!r} (nxdomain, null, nodata, refused, ip:ADDR[,ADDR6])")


def rpz_ip_owner(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """``77.74.176.0/21`` -> ``21.0.176.74.77.rpz-ip``; IPv6 groups reversed with the longest zero run as ``zz``."""
    if net.version == 4:
        return f"{net.prefixlen}." + ".".join(reversed(str(net.network_address).split("."))) + ".rpz-ip"
    groups = [f"{int(g, 16):x}" for g in net.network_address.exploded.split(":")]
    best_start, best_len, i = -1, 0, 0
    while i < 8:
        if groups[i] == "0":
            j = i
            while j < 8 and groups[j] == "0":
                j += 1
            if j - i > best_len and j - i >= 2:
                best_start, best_len = i, j - i
            i = j
        else:
            i += 1
    if best_start >= 0:
        groups = [*groups[:best_start], "zz", *groups[best_start + best_len :]]
    return f"{net.prefixlen}." + ".".join(reversed(groups)) + ".rpz-ip"


def policy_records(policy: Policy, mode: str = "nxdomain", at: datetime | None = None) -> list[RpzRecord]:
    """Every RPZ record of the policy (without SOA/NS), sorted, no duplicates.

    With ``at``, block rules of an app whose effective date is still ahead become ``rpz-passthru.``: the engines let
    the traffic through and log the hit (monitor mode), as enforcer's own resolver does.
    """
    block = mode_actions(mode)
    monitor = {app for app, a in policy.apps.items() if at is not None and at < a.effective}

    def action_for(rule_action: str, app: str) -> tuple[tuple[str, str], ...]:
        return block if rule_action == "block" and app not in monitor else (PASSTHRU,)

    exact: dict[str, tuple[tuple[str, str], ...]] = {}
    wild: dict[str, tuple[tuple[str, str], ...]] = {}
    hosts: set[str] = set()
    for name, rule, is_host in policy.name_entries():
        action = action_for(rule.action, rule.app)
        if is_host:
            exact[name] = action
            hosts.add(name)
        else:
            if name not in hosts:
                exact.setdefault(name, action)
            wild[name] = action
    records = {RpzRecord(n, t, d) for n, acts in exact.items() for t, d in acts}
    records.update(RpzRecord("*." + n, t, d) for n, acts in wild.items() for t, d in acts)
    for net, rule in policy.cidrs:
        for t, d in action_for(rule.action, rule.app):
            records.add(RpzRecord(rpz_ip_owner(net), t, d))
    return sorted(records)
