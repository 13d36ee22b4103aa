"""``enforcer profile``: what an MDM needs to point a managed device's encrypted DNS at enforcer, with its ClientID.

- ``mobileconfig`` (Apple): a configuration profile with one ``com.apple.dnsSettings.managed`` payload. DoH:
  ``DNSProtocol`` HTTPS and ``ServerURL`` ``https://NAME/dns-query/ID``; DoT: ``DNSProtocol`` TLS and ``ServerName``
  ``ID.NAME``. Optional ``ServerAddresses``, ``OnDemandRules`` (``--trusted-ssid``: plain DNS on those Wi-Fi
  networks, encrypted DNS to enforcer everywhere else) and ``ProhibitDisablement``. Only keys of Apple's documented
  schema for that payload (``DNS_SETTINGS_KEYS``, ``PAYLOAD_KEYS``, ``TOP_LEVEL_KEYS``). The payload UUIDs are
  uuid5 values derived from the server name, the id and the protocol, so regenerating a profile replaces the
  installed one instead of adding a second.
- ``android``: the Private DNS hostname ``ID.NAME`` (Private DNS is DNS over TLS) and the managed-configuration
  policy of the Android Management API: ``deviceConnectivityManagement.privateDnsSettings`` with ``privateDnsMode``
  ``PRIVATE_DNS_SPECIFIED_HOST`` and ``privateDnsHost`` (Android 10+, fully managed devices), as JSON.
- ``windows``: a PowerShell script: ``Add-DnsClientDohServerAddress`` (template ``https://NAME/dns-query/ID``,
  auto-upgrade on, no fallback to plain DNS), the interface's DNS server set to enforcer, and the equivalent
  ``netsh dns add encryption`` line. Windows' system resolver speaks DoH only.

``--client-id ID`` prints one profile (or writes it under ``--out DIR``); ``--inventory FILE --out DIR`` writes one
per inventory row that has a ``client_id`` (enforcer/analyst/inventory.py reads the file). Every id must be one DNS
label (``enforcer.dns.clientid.parse_client_id``: the same rule the encrypted listeners apply); a bad one is a
one-line error and exit 1.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import plistlib
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("mobileconfig", "android", "windows")
PROTOCOLS = ("doh", "dot")
SUFFIX = {"mobileconfig": ".mobileconfig", "android": ".android.json", "windows": ".ps1"}
DNS_PAYLOAD_TYPE = "com.apple.dnsSettings.managed"

# Apple's documented keys (device-management schema, payload com.apple.dnsSettings.managed, and the common and
# top-level configuration-profile keys). The profile carries only these; tests/test_profile.py checks it.
DNS_SETTINGS_KEYS = frozenset(
    {"DNSProtocol", "ServerURL", "ServerName", "ServerAddresses", "AllowFailover", "SupplementalMatchDomains"}
)
PAYLOAD_KEYS = frozenset(
    {
        "PayloadType",
        "PayloadVersion",
        "PayloadIdentifier",
        "PayloadUUID",
        "PayloadDisplayName",
        "PayloadDescription",
        "PayloadOrganization",
        "DNSSettings",
        "OnDemandRules",
        "ProhibitDisablement",
        "PayloadCertificateUUID",
    }
)
TOP_LEVEL_KEYS = frozenset(
    {
        "PayloadContent",
        "PayloadDescription",
        "PayloadDisplayName",
        "PayloadIdentifier",
        "PayloadOrganization",
        "PayloadRemovalDisallowed",
        "PayloadScope",
        "PayloadType",
        "PayloadUUID",
        "PayloadVersion",
    }
)
ON_DEMAND_KEYS = frozenset(
    {"Action", "ActionParameters", "DNSDomainMatch", "DNSServerAddressMatch", "InterfaceTypeMatch", "SSIDMatch"}
)


class ProfileError(ValueError):
    """A bad argument or inventory row: one line for the user."""


@dataclass(frozen=True, slots=True)
class Target:
    """What every format is built from: the resolver's name, the device's ClientID, the transport."""

    server_name: str
    client_id: str
    protocol: str  # doh | dot
    addresses: tuple[str, ...] = ()

    @property
    def doh_template(self) -> str:
        return f"https://{self.server_name}/dns-query/{self.client_id}"

    @property
    def dot_name(self) -> str:
        return f"{self.client_id}.{self.server_name}"


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server-name",
        required=True,
        metavar="NAME",
        help="the resolver's public name, as given to 'enforcer dns --server-name' (e.g. dns.example.gov)",
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--client-id", metavar="ID", help="one device's ClientID (one DNS label: [a-z0-9-]{1,63})")
    who.add_argument(
        "--inventory",
        metavar="FILE",
        help="inventory CSV with a client_id column: one profile per row that has one (needs --out)",
    )
    parser.add_argument(
        "--out", metavar="DIR", help="write ID.mobileconfig / ID.android.json / ID.ps1 here (default: print one)"
    )
    parser.add_argument("--format", choices=FORMATS, default="mobileconfig", help="(default: mobileconfig)")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="doh (https://NAME/dns-query/ID) or dot (ID.NAME) (default: doh; android: dot, its only transport)",
    )
    parser.add_argument(
        "--server-address",
        action="append",
        default=[],
        metavar="IP",
        help="the resolver's address (repeatable): Apple ServerAddresses, Windows' DoH server (default: none; "
        "the Windows script then resolves NAME when it runs)",
    )
    parser.add_argument(
        "--trusted-ssid",
        action="append",
        default=[],
        metavar="SSID",
        help="Apple OnDemandRules: on these Wi-Fi networks use the network's DNS, elsewhere enforcer (repeatable; "
        "default: always enforcer)",
    )
    parser.add_argument(
        "--prohibit-disablement",
        action="store_true",
        help="Apple ProhibitDisablement: users cannot turn the DNS settings off (supervised devices) (default: off)",
    )
    parser.add_argument(
        "--organization", default="enforcer", help="PayloadOrganization shown on the device (default: enforcer)"
    )


def run(command: str, args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ProfileError as exc:
        print(f"enforcer profile: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    server = server_name(args.server_name)
    protocol = args.protocol or ("dot" if args.format == "android" else "doh")
    if args.format == "android" and protocol != "dot":
        raise ProfileError("--format android: Android's Private DNS is DNS over TLS only; use --protocol dot")
    if args.format == "windows" and protocol != "doh":
        raise ProfileError("--format windows: the Windows resolver speaks DNS over HTTPS only; use --protocol doh")
    if args.inventory and not args.out:
        raise ProfileError("--inventory writes one file per device: give --out DIR")
    addresses = tuple(_address(a) for a in args.server_address)
    ids = (
        [(client_id(args.client_id, "--client-id"), "")]
        if args.client_id is not None
        else _inventory_ids(args.inventory)
    )
    rendered = [(cid, render(args, Target(server, cid, protocol, addresses))) for cid, _ in ids]
    if not args.out:
        sys.stdout.write(rendered[0][1])
        return 0
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for cid, text in rendered:
            (out / f"{cid}{SUFFIX[args.format]}").write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"cannot write to {out}: {exc.strerror or exc}") from None
    print(f"wrote {len(rendered)} {args.format} profile(s) to {out}")
    return 0


def server_name(text: str) -> str:
    """The resolver's name, normalised like every DNS name here; a bare label or an address is refused."""
    from .policy.names import InvalidName, normalize_name

    try:
        name = normalize_name(text)
    except InvalidName as exc:
        raise ProfileError(f"--server-name {text!r}: {exc}") from None
    if "." not in name or _is_address(name):
        raise ProfileError(f"--server-name {text!r}: give the resolver's DNS name (e.g. dns.example.gov)")
    return name


def client_id(text: str, where: str) -> str:
    """One DNS label, case-folded (the rule of the encrypted listeners), else a ProfileError naming ``where``."""
    from .dns.clientid import INVALID, parse_client_id

    cid = parse_client_id(text.strip())
    if cid == INVALID:
        raise ProfileError(f"{where}: ClientID {text!r} is not one DNS label ([a-z0-9-]{{1,63}})")
    return cid


def _inventory_ids(path: str) -> list[tuple[str, str]]:
    """(ClientID, device) for every inventory row that has one; a bad id is an error."""
    from .analyst.inventory import Inventory
    from .config import ConfigError

    try:
        inventory = Inventory.load(path)
    except ConfigError as exc:
        raise ProfileError(str(exc)) from None
    seen: dict[str, str] = {}
    for row in inventory.rows:
        if not row.client_id:
            continue
        # The inventory already refuses a ClientID given twice (case-folded, with both lines named).
        seen[client_id(row.client_id, f"{path}: device {row.device!r}")] = row.device
    if not seen:
        raise ProfileError(f"{path}: no row has a client_id (add a client_id column)")
    return list(seen.items())


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ProfileError(f"--server-address {text!r} is not an IP address") from None


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def render(args: argparse.Namespace, target: Target) -> str:
    if args.format == "mobileconfig":
        return mobileconfig(target, args.trusted_ssid, args.prohibit_disablement, args.organization)
    if args.format == "android":
        return android(target)
    return windows(target)


# -- Apple -----------------------------------------------------------------------------------------------------------
def payload_uuid(target: Target, part: str) -> str:
    """A stable UUID: the same server, id, protocol and part always give the same value (uuid5)."""
    namespace = uuid.uuid5(uuid.NAMESPACE_DNS, target.server_name)
    return str(uuid.uuid5(namespace, f"enforcer-profile/{target.client_id}/{target.protocol}/{part}")).upper()


def mobileconfig_dict(
    target: Target, trusted_ssids: list[str] | tuple[str, ...] = (), prohibit: bool = False, org: str = "enforcer"
) -> dict[str, Any]:
    settings: dict[str, Any] = {"DNSProtocol": "HTTPS" if target.protocol == "doh" else "TLS"}
    if target.protocol == "doh":
        settings["ServerURL"] = target.doh_template
    else:
        settings["ServerName"] = target.dot_name
    if target.addresses:
        settings["ServerAddresses"] = list(target.addresses)
    # Reverse-DNS identifiers, unique per device and protocol, so two profiles never replace each other by mistake.
    ident = ".".join(reversed(target.server_name.split("."))) + f".enforcer.{target.protocol}.{target.client_id}"
    transport = "DNS over HTTPS" if target.protocol == "doh" else "DNS over TLS"
    payload: dict[str, Any] = {
        "PayloadType": DNS_PAYLOAD_TYPE,
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.dns",
        "PayloadUUID": payload_uuid(target, "dns"),
        "PayloadDisplayName": f"Encrypted DNS ({target.server_name})",
        "PayloadDescription": f"{transport} to {target.server_name} for device {target.client_id}",
        "PayloadOrganization": org,
        "DNSSettings": settings,
    }
    if trusted_ssids:
        # First match wins: on a trusted Wi-Fi the network's resolver (enforcer on the LAN) answers; anywhere else
        # the device uses enforcer over the encrypted transport.
        payload["OnDemandRules"] = [
            {"Action": "Disconnect", "InterfaceTypeMatch": "WiFi", "SSIDMatch": list(trusted_ssids)},
            {"Action": "Connect"},
        ]
    if prohibit:
        payload["ProhibitDisablement"] = True
    return {
        "PayloadContent": [payload],
        "PayloadDisplayName": f"Encrypted DNS: {target.server_name}",
        "PayloadDescription": f"Sends this device's DNS to {target.server_name} ({transport}), ClientID "
        f"{target.client_id}.",
        "PayloadIdentifier": ident,
        "PayloadOrganization": org,
        "PayloadScope": "System",
        "PayloadType": "Configuration",
        "PayloadUUID": payload_uuid(target, "profile"),
        "PayloadVersion": 1,
    }


def mobileconfig(
    target: Target, trusted_ssids: list[str] | tuple[str, ...] = (), prohibit: bool = False, org: str = "enforcer"
) -> str:
    data = mobileconfig_dict(target, trusted_ssids, prohibit, org)
    return plistlib.dumps(data, fmt=plistlib.FMT_XML, sort_keys=True).decode("utf-8")


# -- Android ---------------------------------------------------------------------------------------------------------
def android(target: Target) -> str:
    host = target.dot_name
    doc = {
        "client_id": target.client_id,
        "private_dns_hostname": host,
        # Android Management API policy fragment (fully managed devices, Android 10+).
        "android_management_policy": {
            "deviceConnectivityManagement": {
                "privateDnsSettings": {"privateDnsMode": "PRIVATE_DNS_SPECIFIED_HOST", "privateDnsHost": host}
            }
        },
        # The same through a device-owner app (DevicePolicyManager, API 29+).
        "device_policy_manager": f'setGlobalPrivateDnsModeSpecifiedHost(admin, "{host}")',
    }
    return json.dumps(doc, indent=2) + "\n"


# -- Windows ---------------------------------------------------------------------------------------------------------
def _ps_quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def windows(target: Target) -> str:
    template = target.doh_template
    if target.addresses:
        addresses = "@(" + ", ".join(_ps_quote(a) for a in target.addresses) + ")"
    else:
        addresses = f"@((Resolve-DnsName -Name {_ps_quote(target.server_name)} -Type A).IPAddress)"
    lines = [
        f"# enforcer profile: DNS over HTTPS to {target.server_name} for device {target.client_id}.",
        "# Run as Administrator (Windows 11 / Server 2022 or later). No fallback to plain DNS.",
        f"$servers = {addresses}",
        "foreach ($s in $servers) {",
        f"    Add-DnsClientDohServerAddress -ServerAddress $s -DohTemplate {_ps_quote(template)} "
        "-AllowFallbackToUdp $False -AutoUpgrade $True",
        "}",
        "Get-NetAdapter -Physical | Where-Object Status -eq 'Up' | ForEach-Object {",
        "    Set-DnsClientServerAddress -InterfaceIndex $_.ifIndex -ServerAddresses $servers",
        "}",
        "# The same with netsh, per server address:",
    ]
    shown = target.addresses or ("<server address>",)
    lines += [
        f"#   netsh dns add encryption server={a} dohtemplate={template} autoupgrade=yes udpfallback=no" for a in shown
    ]
    return "\n".join(lines) + "\n"
