"""The DNS formats of ``enforcer export``: rpz (also the RPZ feed's records), unbound, dnsmasq, hosts, domains.

- ``rpz_records(policy, ...)``: the zone's policy records, the one source of RPZ content (the ``rpz`` export renders
  it as a zone file, ``enforcer.rpz`` serves it by AXFR/IXFR); ``rpz_ip_trigger(net)``: an rpz-ip owner name.
- One writer per format (``_rpz``, ``_unbound``, ``_dnsmasq``, ``_hosts``, ``_domains``), listed in ``WRITERS``;
  each returns body lines and the notes for its header.
- ``rule_mode(rule, mode)``: the answer a block rule asks for: its ``dns_action`` (a canary must be NXDOMAIN), else
  ``--mode``. rpz: NXDOMAIN as ``CNAME .``, null as local data, nodata as ``CNAME *.``, refused as NXDOMAIN (RPZ has
  no REFUSED); unbound: the rule's own
  local-zone type (always_nxdomain, always_null, always_nodata, always_refuse); dnsmasq: ``address=/NAME/`` for
  nxdomain, the null addresses for null, and NXDOMAIN for nodata/refused (dnsmasq has no per-name NODATA or
  REFUSED); hosts and domains cannot express an answer: unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from .export_view import Context, build_context, dedupe_cidrs, has_underscore
from .matcher import Policy
from .model import IPNetwork, Rule
from .modes import Mode, parse_mode

_RPZ_SPECIAL_TLDS = {"rpz-ip", "rpz-nsip", "rpz-nsdname", "rpz-client-ip"}


_MAX_NAME = 253


# -- rpz ------------------------------------------------------------------------------------------------------------


_RULE_MODES = {action: parse_mode(action) for action in ("nxdomain", "null", "nodata", "refused")}


def rule_mode(rule: Rule, mode: Mode) -> Mode:
    """The answer mode of a block rule: its ``dns_action`` when it has one, else the export's ``--mode``."""
    return _RULE_MODES[rule.dns_action] if rule.dns_action is not None else mode


def _rpz_action(rule: Rule, mode: Mode) -> list[tuple[str, str]]:
    """(type, rdata) of the policy action for one trigger."""
    if rule.action == "allow":
        return [("CNAME", "rpz-passthru.")]
    mode = rule_mode(rule, mode)
    if mode.kind == "refused":  # a rule's dns_action: RPZ has no REFUSED action; NXDOMAIN is the nearest
        mode = _RULE_MODES["nxdomain"]
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
    return rpz_triggers(build_context(policy, "rpz", zone, mode, now))


def rpz_triggers(ctx: Context) -> list[tuple[str, str, str]]:
    out = [(owner, rtype, rdata) for owner, rule in _name_triggers(ctx) for rtype, rdata in _rpz_action(rule, ctx.mode)]
    for net, rule in dedupe_cidrs(ctx.cidrs()):
        # An rpz-ip trigger replaces answers of its own family: Unbound rejects AAAA data on an IPv4 trigger.
        family = "A" if net.version == 4 else "AAAA"
        for rtype, rdata in _rpz_action(rule, ctx.mode):
            if rtype in ("A", "AAAA") and rtype != family:
                continue
            out.append((rpz_ip_trigger(net), rtype, rdata))
    return out


def _name_triggers(ctx: Context) -> Iterator[tuple[str, Rule]]:
    """(QNAME trigger owner, the rule it carries): NAME for its own verdict, ``*.NAME`` for the names below it."""
    view, skips = ctx.view, ctx.skips
    room = _MAX_NAME - len(ctx.zone)  # owner text + "." + zone must fit a DNS name
    for name in view.names():
        if name.rsplit(".", 1)[-1] in _RPZ_SPECIAL_TLDS:
            skips.add("ends in an RPZ trigger label", name)
            continue
        apex = view.hosts.get(name) or view.domains.get(name)
        assert apex is not None
        # BIND's check-names (fail for primary zones) rejects '_' in owners of address records.
        if rule_mode(apex, ctx.mode).kind in ("null", "ip") and apex.action == "block" and has_underscore(name):
            skips.add("'_' in a name that would own A/AAAA records", name)
            continue
        if len(name) + 1 > room:
            skips.add("too long below the RPZ zone name", name)
            continue
        yield name, apex
        sub = view.domains.get(name)
        if sub is not None:
            if len(name) + 3 > room:
                skips.add("wildcard too long below the RPZ zone name", name)
                continue
            yield f"*.{name}", sub


def _rpz(ctx: Context) -> tuple[list[str], list[str]]:
    zone = ctx.zone
    serial = int(ctx.when.timestamp()) % (2**32)
    body = [
        f"$ORIGIN {zone}",
        "$TTL 60",
        f"@ SOA localhost. hostmaster.localhost. {serial} 3600 600 604800 60",
        "@ NS localhost.",
    ]
    body.extend(f"{owner} {rtype} {rdata}" for owner, rtype, rdata in rpz_triggers(ctx))
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


# -- unbound --------------------------------------------------------------------------------------------------------

_UNBOUND_TYPES = {
    "nxdomain": "always_nxdomain",
    "nodata": "always_nodata",
    "null": "always_null",
    "refused": "always_refuse",
    "ip": "redirect",
}


def _unbound(ctx: Context) -> tuple[list[str], list[str]]:
    view = ctx.view
    exact_possible = ctx.mode.kind in ("null", "ip")
    body = ["server:"]

    def data(name: str, mode: Mode) -> None:
        v4, v6 = mode.addresses
        if v4:
            body.append(f'local-data: "{name}. A {v4}"')
        if v6:
            body.append(f'local-data: "{name}. AAAA {v6}"')

    for name in view.names():
        apex, sub = view.verdicts(name)
        apex_block = apex is not None and apex.action == "block"
        sub_block = sub is not None and sub.action == "block"
        if sub_block and apex_block:
            assert sub is not None
            mode = rule_mode(sub, ctx.mode)
            body.append(f'local-zone: "{name}." {_UNBOUND_TYPES[mode.kind]}')
            if mode.kind == "ip":
                data(name, mode)
        elif apex_block:
            assert apex is not None
            mode = rule_mode(apex, ctx.mode)
            # An exact host with nothing blocked below it.
            if mode.kind in ("null", "ip"):
                # A transparent zone answers its own name from local-data (other types: NODATA) and resolves
                # the names below it normally: exactly one name blocked.
                body.append(f'local-zone: "{name}." transparent')
                data(name, mode)
            else:
                body.append(f'local-zone: "{name}." {_UNBOUND_TYPES[mode.kind]}')
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


def _dnsmasq(ctx: Context) -> tuple[list[str], list[str]]:
    view = ctx.view
    body: list[str] = []
    for name in view.names():
        apex, sub = view.verdicts(name)
        if apex is not None and apex.action == "block":
            mode = rule_mode(apex, ctx.mode)
            v4, v6 = mode.addresses
            # A rule's nodata/refused: dnsmasq has no per-name NODATA or REFUSED; NXDOMAIN is the nearest negative
            # answer (the --mode itself keeps its old rendering).
            negative = mode.kind == "nxdomain" or (apex.dns_action in ("nodata", "refused"))
            if negative:
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


def _hosts(ctx: Context) -> tuple[list[str], list[str]]:
    view, skips, mode = ctx.view, ctx.skips, ctx.mode
    v4, v6 = mode.addresses if mode.kind != "nxdomain" else ("0.0.0.0", None)
    body: list[str] = []
    for name in view.names():
        apex = view.apex(name)
        if apex is None or apex.action != "block":
            continue
        if has_underscore(name):
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


def _domains(ctx: Context) -> tuple[list[str], list[str]]:
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


WRITERS: dict[str, Callable[[Context], tuple[list[str], list[str]]]] = {
    "rpz": _rpz,
    "unbound": _unbound,
    "dnsmasq": _dnsmasq,
    "hosts": _hosts,
    "domains": _domains,
}
