"""``enforcer profile`` (enforcer/profile.py): MDM profiles for encrypted DNS with a ClientID, through the real CLI.

The Apple profile is loaded back with plistlib and must carry exactly the keys Apple documents for a
``com.apple.dnsSettings.managed`` payload (the key sets below are Apple's schema, written out independently of the
module's own constants so that a typo in either one fails).
"""

from __future__ import annotations

import json
import plistlib
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli

SERVER = "dns.example.gov"
UUID_RE = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-5[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}")  # uuid5, upper case
# Apple's schema (device-management, com.apple.dnsSettings.managed): DNSSettings subkeys, payload keys (with the
# common payload keys), OnDemandRules element keys, and the top-level configuration profile keys we may use.
APPLE_DNS_SETTINGS = {"DNSProtocol", "ServerURL", "ServerName", "ServerAddresses", "AllowFailover",
                      "SupplementalMatchDomains"}  # fmt: skip
APPLE_PAYLOAD = {"PayloadType", "PayloadVersion", "PayloadIdentifier", "PayloadUUID", "PayloadDisplayName",
                 "PayloadDescription", "PayloadOrganization", "DNSSettings", "OnDemandRules", "ProhibitDisablement",
                 "PayloadCertificateUUID"}  # fmt: skip
APPLE_ON_DEMAND = {"Action", "ActionParameters", "DNSDomainMatch", "DNSServerAddressMatch", "InterfaceTypeMatch",
                   "SSIDMatch", "URLStringProbe"}  # fmt: skip
APPLE_TOP = {"PayloadContent", "PayloadDescription", "PayloadDisplayName", "PayloadIdentifier", "PayloadOrganization",
             "PayloadRemovalDisallowed", "PayloadScope", "PayloadType", "PayloadUUID", "PayloadVersion"}  # fmt: skip


def _profile(*args: str) -> dict[str, Any]:
    proc = run_cli("profile", "--server-name", SERVER, *args)
    assert proc.returncode == 0, proc.stderr
    data = plistlib.loads(proc.stdout.encode("utf-8"))
    assert isinstance(data, dict)
    return data


def _dns_payload(data: dict[str, Any]) -> dict[str, Any]:
    assert set(data) <= APPLE_TOP
    assert data["PayloadType"] == "Configuration" and data["PayloadVersion"] == 1
    (payload,) = data["PayloadContent"]
    assert isinstance(payload, dict) and set(payload) <= APPLE_PAYLOAD
    assert payload["PayloadType"] == "com.apple.dnsSettings.managed" and payload["PayloadVersion"] == 1
    assert set(payload["DNSSettings"]) <= APPLE_DNS_SETTINGS
    assert UUID_RE.fullmatch(data["PayloadUUID"]) and UUID_RE.fullmatch(payload["PayloadUUID"])
    assert data["PayloadUUID"] != payload["PayloadUUID"]
    return dict(payload)


def test_doh_profile_has_exactly_the_documented_keys_and_the_client_id_in_the_path() -> None:
    data = _profile("--client-id", "Phone-7")  # case-folded, as the listeners fold it
    payload = _dns_payload(data)
    assert payload["DNSSettings"] == {"DNSProtocol": "HTTPS", "ServerURL": "https://dns.example.gov/dns-query/phone-7"}
    assert set(payload) == {"PayloadType", "PayloadVersion", "PayloadIdentifier", "PayloadUUID", "PayloadDisplayName",
                            "PayloadDescription", "PayloadOrganization", "DNSSettings"}  # fmt: skip
    assert set(data) == APPLE_TOP - {"PayloadRemovalDisallowed"}
    assert data["PayloadScope"] == "System"


def test_dot_profile_names_the_server_with_the_id_label_and_carries_options() -> None:
    options = ["--server-address", "192.0.2.53", "--server-address", "2001:db8::53", "--trusted-ssid", "GC-Office"]
    data = _profile("--client-id", "p1", "--protocol", "dot", *options, "--prohibit-disablement")
    payload = _dns_payload(data)
    assert payload["DNSSettings"] == {"DNSProtocol": "TLS", "ServerName": "p1.dns.example.gov",
                                      "ServerAddresses": ["192.0.2.53", "2001:db8::53"]}  # fmt: skip
    assert payload["ProhibitDisablement"] is True
    rules = payload["OnDemandRules"]
    assert all(set(rule) <= APPLE_ON_DEMAND for rule in rules)
    assert rules == [{"Action": "Disconnect", "InterfaceTypeMatch": "WiFi", "SSIDMatch": ["GC-Office"]},
                     {"Action": "Connect"}]  # fmt: skip


def test_uuids_are_stable_per_device_and_protocol_and_differ_between_them() -> None:
    def uuids(*args: str) -> tuple[str, str]:
        data = _profile(*args)
        return data["PayloadUUID"], data["PayloadContent"][0]["PayloadUUID"]

    first = uuids("--client-id", "p1")
    assert uuids("--client-id", "P1") == first  # same device: the installed profile is replaced, not duplicated
    assert uuids("--client-id", "p2") != first
    assert uuids("--client-id", "p1", "--protocol", "dot") != first
    namespace = uuid.uuid5(uuid.NAMESPACE_DNS, SERVER)
    assert first[1] == str(uuid.uuid5(namespace, "enforcer-profile/p1/doh/dns")).upper()


def test_android_gives_the_private_dns_host_and_the_management_api_policy() -> None:
    proc = run_cli("profile", "--server-name", "DNS.Example.gov.", "--client-id", "tab-3", "--format", "android")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["private_dns_hostname"] == "tab-3.dns.example.gov"
    settings = doc["android_management_policy"]["deviceConnectivityManagement"]["privateDnsSettings"]
    assert settings == {"privateDnsMode": "PRIVATE_DNS_SPECIFIED_HOST", "privateDnsHost": "tab-3.dns.example.gov"}


def test_windows_script_adds_the_doh_template_with_the_id() -> None:
    proc = run_cli("profile", "--server-name", SERVER, "--client-id", "lap-9", "--format", "windows",
                   "--server-address", "192.0.2.53")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "$servers = @('192.0.2.53')" in proc.stdout
    assert ("Add-DnsClientDohServerAddress -ServerAddress $s -DohTemplate 'https://dns.example.gov/dns-query/lap-9' "
            "-AllowFallbackToUdp $False -AutoUpgrade $True") in proc.stdout  # fmt: skip
    assert (
        "netsh dns add encryption server=192.0.2.53 dohtemplate=https://dns.example.gov/dns-query/lap-9" in proc.stdout
    )
    unresolved = run_cli("profile", "--server-name", SERVER, "--client-id", "lap-9", "--format", "windows")
    assert "(Resolve-DnsName -Name 'dns.example.gov' -Type A).IPAddress" in unresolved.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--client-id", "a.b"], "--client-id: ClientID 'a.b' is not one DNS label ([a-z0-9-]{1,63})"),
        (["--client-id", "x_y"], "ClientID 'x_y' is not one DNS label"),
        (["--client-id", "é"], "ClientID 'é' is not one DNS label"),
        (["--client-id", "a" * 64], "is not one DNS label"),
        (["--client-id", ""], "ClientID '' is not one DNS label"),
        (
            ["--client-id", "p", "--server-address", "dns.example.gov"],
            "--server-address 'dns.example.gov' is not an IP",
        ),
        (["--client-id", "p", "--format", "android", "--protocol", "doh"], "Private DNS is DNS over TLS only"),
        (["--client-id", "p", "--format", "windows", "--protocol", "dot"], "DNS over HTTPS only"),
        (["--inventory", "x.csv"], "--inventory writes one file per device: give --out DIR"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(args: list[str], message: str) -> None:
    proc = run_cli("profile", "--server-name", SERVER, *args)
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", ["localhost", "192.0.2.1", "bad..name", "-x.example"])
def test_a_bad_server_name_is_refused(name: str) -> None:
    proc = run_cli("profile", f"--server-name={name}", "--client-id", "p")
    assert proc.returncode == 1 and proc.stderr.startswith(f"enforcer profile: --server-name {name!r}"), proc.stderr


def test_inventory_writes_one_profile_per_client_id(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.csv"
    inventory.write_text(
        "cidr,device,owner,unit,client_id\n"
        "10.1.0.0/24,phone-a,Ana,HR,phone-a\n"
        "10.1.1.0/24,phone-b,Bo,IT,Phone-B\n"
        "10.1.2.0/24,desk-c,Cy,IT,\n",
        encoding="utf-8",
    )
    out = tmp_path / "profiles"
    proc = run_cli("profile", "--server-name", SERVER, "--inventory", str(inventory), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote 2 mobileconfig profile(s) to {out}"
    assert sorted(p.name for p in out.iterdir()) == ["phone-a.mobileconfig", "phone-b.mobileconfig"]
    for cid in ("phone-a", "phone-b"):
        payload = plistlib.loads((out / f"{cid}.mobileconfig").read_bytes())["PayloadContent"][0]
        assert payload["DNSSettings"]["ServerURL"] == f"https://dns.example.gov/dns-query/{cid}"
    proc = run_cli("profile", "--server-name", SERVER, "--inventory", str(inventory), "--out", str(out),
                   "--format", "android")  # fmt: skip
    assert proc.returncode == 0 and json.loads((out / "phone-b.android.json").read_text())["private_dns_hostname"] == (
        "phone-b.dns.example.gov"
    )


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("10.1.0.0/24,phone-a,Ana,HR,bad.id\n", "device 'phone-a': ClientID 'bad.id' is not one DNS label"),
        (
            "10.1.0.0/24,a,Ana,HR,same\n10.1.1.0/24,b,Bo,IT,same\n",
            "inventory.csv:3: client_id same is already mapped at line 2",
        ),
        # ClientIDs are DNS labels, so case does not make two of them: the inventory names the line.
        (
            "10.1.0.0/24,a,Ana,HR,Same\n10.1.1.0/24,b,Bo,IT,same\n",
            "inventory.csv:3: client_id same is already mapped at line 2",
        ),
        ("10.1.0.0/24,a,Ana,HR,\n", "no row has a client_id"),
    ],
)
def test_bad_inventory_rows_are_named(tmp_path: Path, rows: str, message: str) -> None:
    inventory = tmp_path / "inventory.csv"
    inventory.write_text("cidr,device,owner,unit,client_id\n" + rows, encoding="utf-8")
    proc = run_cli("profile", "--server-name", SERVER, "--inventory", str(inventory), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and message in proc.stderr and str(inventory) in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
