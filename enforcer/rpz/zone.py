"""The policy's DNS rules as RPZ records for the feed: ``enforcer.policy.export.rpz_records`` is the one source.

QNAME triggers (a domain is ``name`` and ``*.name``, a host ``name``), ``rpz-passthru.`` for allow exceptions and for
apps still before their effective date (monitor mode: the engines log and let through), ``rpz-ip`` triggers for CIDRs.
RPZ engines prefer an exact owner over a wildcard and a longer wildcard over a shorter one: the policy's own
"most specific rule wins". ``refused`` has no RPZ action and is served as ``nxdomain``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..policy.export_dns import rpz_records
from ..policy.matcher import Policy
from ..policy.modes import parse_mode


@dataclass(frozen=True, slots=True, order=True)
class RpzRecord:
    owner: str  # relative to the zone apex, e.g. "weixin.qq.com", "*.weixin.qq.com", "21.0.176.74.77.rpz-ip"
    rtype: str
    rdata: str


def rpz_mode(mode: str) -> str:
    """The RPZ action for a resolver ``--mode`` (ValueError for an invalid mode)."""
    return "nxdomain" if parse_mode(mode).kind == "refused" else mode


def policy_records(
    policy: Policy, mode: str = "nxdomain", at: datetime | None = None, zone: str = "rpz.enforcer."
) -> list[RpzRecord]:
    """Every RPZ record of the policy as of ``at`` (without SOA/NS), sorted, no duplicates."""
    return sorted({RpzRecord(*r) for r in rpz_records(policy, zone=zone, mode=rpz_mode(mode), now=at)})
