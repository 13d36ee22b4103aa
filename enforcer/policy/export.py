"""Export the policy for other software, in a form each one loads as is.

- ``export_policy(policy, fmt, *, zone, mode, now)``: the one entry point; ``FORMATS`` lists the formats.
- ``_header``: every export opens with the policy fingerprint, the generation time and what the format could not
  express (skipped names are counted there, never written half-valid).
- The writers: ``export_dns.py`` (rpz, unbound, dnsmasq, hosts, domains; ``rpz_records`` for the RPZ feed) and
  ``export_filters.py`` (adblock, squid, nftables); what they all see of the policy: ``export_view.py``.

Precedence (blocklists/README.md): the most specific rule wins, at equal specificity allow wins. Where a target
cannot express a nuance (an exact host in dnsmasq, suffixes in a hosts file) the header says what it does instead.
"""

from __future__ import annotations

from datetime import datetime

from . import export_dns, export_filters
from .export_dns import rpz_ip_trigger, rpz_records
from .export_view import MODES_OF, build_context
from .matcher import Policy
from .modes import Mode

# rpz_records and rpz_ip_trigger (export_dns.py) are part of this module's interface: the RPZ feed and its tests.
__all__ = ["FORMATS", "export_policy", "rpz_ip_trigger", "rpz_records"]

FORMATS = ("rpz", "hosts", "domains", "dnsmasq", "unbound", "adblock", "squid", "nftables")

_COMMENT = {"rpz": ";", "adblock": "!"}

_WRITERS = {**export_dns.WRITERS, **export_filters.WRITERS}


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
    ctx = build_context(policy, fmt, zone, mode, now)
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
    header = _header(policy, fmt, when, notes + ctx.skips.notes(), parsed if fmt in MODES_OF else None)
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
