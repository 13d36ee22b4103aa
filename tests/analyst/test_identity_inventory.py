"""The inventory's identifier columns: header forms, lookups by MAC / hostname / ClientID, located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from enforcer.analyst.inventory import Inventory, normal_mac
from enforcer.config import ConfigError
from tests.conftest import run_cli

FULL = """device,owner,unit,mac,hostname,client_id,cidr
phone-1,Alice Martin,Finance,AA-BB-CC-00-00-01,alice-phone,,
laptop-2,Bob Roy,Ops,aabb.cc00.0002,bob-laptop.corp.example.,laptop2,
tablet-3,Chloe Dubé,Research,,,tab3,
printer-4,Facilities,HQ,,,,10.1.9.0/24
"""


def _write(tmp_path: Path, text: str, name: str = "inv.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_columns_in_any_order_and_every_lookup(tmp_path: Path) -> None:
    inv = Inventory.load(_write(tmp_path, FULL))
    assert len(inv) == 4
    assert inv.client_ids == frozenset({"laptop2", "tab3"})
    for spelling in ("aa:bb:cc:00:00:01", "AA-BB-CC-00-00-01", "aabb.cc00.0001", "aabbcc000001"):
        dev = inv.by_mac(spelling)
        assert dev is not None and (dev.device, dev.owner, dev.unit) == ("phone-1", "Alice Martin", "Finance")
    assert inv.by_mac("aa:bb:cc:00:00:09") is None and inv.by_mac("not a mac") is None
    assert inv.by_mac("aa:bb:cc:00:00:02").device == "laptop-2"  # type: ignore[union-attr]
    # Hostnames: case-insensitive, trailing dot ignored, a bare name meets its FQDN and the reverse.
    for name in ("BOB-LAPTOP.corp.example", "bob-laptop", "bob-laptop.corp.example."):
        assert inv.by_hostname(name).device == "laptop-2", name  # type: ignore[union-attr]
    assert inv.by_hostname("alice-phone.dhcp.example.").device == "phone-1"  # type: ignore[union-attr]
    assert inv.by_hostname("carol") is None and inv.by_hostname("") is None
    assert inv.by_client_id("tab3").unit == "Research"  # type: ignore[union-attr]
    assert inv.by_client_id("TAB3") is inv.by_client_id("tab3")  # a DNS label: case-insensitive
    assert inv.by_client_id("tab") is None
    assert inv.lookup("10.1.9.44").device == "printer-4"  # type: ignore[union-attr]
    assert inv.lookup("10.1.8.1") is None
    assert inv.by_mac("aa:bb:cc:00:00:01").cidr == ""  # type: ignore[union-attr]


def test_todays_files_keep_working(tmp_path: Path) -> None:
    with_header = Inventory.load(_write(tmp_path, "cidr,device,owner,unit\n10.0.0.0/8,net,o,u\n", "a.csv"))
    without = Inventory.load(_write(tmp_path, "10.0.0.0/8,net,o,u\n10.1.0.0/16,sub,o2\n", "b.csv"))
    assert with_header.lookup("10.2.3.4").device == without.lookup("10.2.3.4").device == "net"  # type: ignore[union-attr]
    assert without.lookup("10.1.3.4").owner == "o2" and without.lookup("10.1.3.4").unit == ""  # type: ignore[union-attr]
    assert with_header.client_ids == frozenset()


def test_normal_mac() -> None:
    assert normal_mac("0:1:2:a:b:c") == "00:01:02:0a:0b:0c"
    assert normal_mac("01:AA:BB:CC:DD:EE:FF") == "01:aa:bb:cc:dd:ee:ff"  # a DHCP client-id with its type octet
    for bad in ("", "zz:zz", "aabbc", "1:2:3:4:5:6:7:8:9:a:b:c:d:e:f:10:11:12:13:14:15", "aa::bb", "abc.def"):
        assert normal_mac(bad) is None, bad


def test_client_ids_are_case_insensitive(tmp_path: Path) -> None:
    inv = Inventory.load(_write(tmp_path, "client_id,device,owner,unit\nPhone-17,phone-0017,Alice,Finance\n"))
    assert inv.by_client_id("phone-17") is inv.by_client_id("PHONE-17") is not None
    assert inv.client_ids == {"phone-17"}  # what the resolver's --require-client-id accepts


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("device,owner,unit\nx,y,z\n", 1, "header lacks one of cidr,mac,hostname,client_id"),
        ("mac,device,owner\naa:bb:cc:dd:ee:ff,x,y\n", 1, "header lacks unit"),
        ("mac,device,owner,unit,colour\n", 1, "unknown column 'colour'"),
        ("mac,device,owner,unit,MAC\n", 1, "column 'mac' appears twice"),
        ("mac,device,owner,unit\nzz:zz,x,y,z\n", 2, "invalid MAC 'zz:zz'"),
        (
            "mac,device,owner,unit\n\n# note\naa:bb:cc:dd:ee:01,x,y,z\nAA-BB-CC-DD-EE-01,w,y,z\n",
            5,
            "mac aa:bb:cc:dd:ee:01 is already mapped at line 4",
        ),
        ("hostname,device,owner,unit\nPhone,x,y,z\nphone.,w,y,z\n", 3, "hostname phone is already mapped at line 2"),
        ("client_id,device,owner,unit\nc1,x,y,z\nc1,w,y,z\n", 3, "client_id c1 is already mapped at line 2"),
        # One device name, two owners: the cases (keyed by device) mixed two people's hits
        (
            "cidr,device,owner,unit\n10.0.0.0/31,phone,Alice,Finance\n10.0.0.2/31,phone,Carol,Ops\n",
            3,
            "device 'phone' has owner 'Carol', unit 'Ops' here but 'Alice', 'Finance' at line 2",
        ),
        # ClientIDs are DNS labels, folded to lower case by the resolver
        ("client_id,device,owner,unit\nPhone-17,x,y,z\nphone-17,w,y,z\n", 3, "client_id phone-17 is already mapped"),
        ("mac,hostname,device,owner,unit\n,,x,y,z\n", 2, "row for 'x' has no cidr, mac, hostname, client_id"),
        ("mac,device,owner,unit\naa:bb:cc:dd:ee:01,,y,z\n", 2, "missing device name for aa:bb:cc:dd:ee:01"),
        ("cidr,device,owner,unit\n10.0.0.0/33,x,y,z\n", 2, "invalid CIDR '10.0.0.0/33'"),
        ("mac,device,owner,unit\naa:bb:cc:dd:ee:01,x,y,z,extra\n", 2, "expected mac,device,owner,unit, got 5 fields"),
    ],
)
def test_located_errors(tmp_path: Path, text: str, where: int, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Inventory.load(path)
    assert str(info.value).startswith(f"{path}:{where}: ") and message in str(info.value), str(info.value)
    if where == 1:  # a header problem names what a header must hold
        assert "cidr,device,owner,unit" in str(info.value)


def test_cli_reports_a_bad_header_in_one_line(tmp_path: Path) -> None:
    inv = _write(tmp_path, "macaddr,device,owner,unit\naa:bb:cc:dd:ee:01,x,y,z\n")
    out = run_cli("report", "--inventory", str(inv), "--events", str(tmp_path))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert lines[0].startswith(f"{inv}:1: unknown column 'macaddr'") and "mac" in lines[0]
