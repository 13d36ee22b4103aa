"""Export the policy's DNS rules for other software (placeholder: filled in by the export work)."""

from __future__ import annotations

from .matcher import Policy

FORMATS = ("rpz", "hosts", "domains", "dnsmasq", "unbound", "adblock", "squid", "nftables")


def export_policy(policy: Policy, fmt: str, *, zone: str = "rpz.enforcer.", mode: str = "nxdomain") -> str:
    raise ValueError(f"format {fmt!r} is not implemented yet")
