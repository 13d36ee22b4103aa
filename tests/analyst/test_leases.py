"""Lease files: the three formats detected from content, located skips for malformed lines, time-aware attribution,
and the follower (appends read from where they stopped, rewrites keep what was learned, a bounded book)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enforcer.analyst.leases import DHCPD, DNSMASQ, KEA, Lease, LeaseBook, LeaseFiles, detect, load, read_leases
from enforcer.config import ConfigError
from tests.conftest import run_cli

US = 1_000_000
T = 1_700_000_000  # 2023-11-14T22:13:20Z
KEA4_HEAD = "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context\n"
KEA6_HEAD = (
    "address,duid,valid_lifetime,expire,subnet_id,pref_lifetime,lease_type,iaid,prefix_len,fqdn_fwd,fqdn_rev,"
    "hostname,hwaddr,state,user_context,hwtype,hwaddr_source\n"
)
DHCPD_SAMPLE = f"""# The format of this file is documented in the dhcpd.leases(5) manual page.
authoring-byte-order little-endian;

lease 10.0.0.5 {{
  starts 2 2023/11/14 22:13:20;
  ends 2 2023/11/14 23:13:20;
  binding state active;
  hardware ethernet AA:BB:CC:00:00:05;
  uid "\\001\\252\\273\\314\\000\\000\\005";
  set vendor-class-identifier = "android-dhcp-13";
  client-hostname "Pixel-7";
}}
lease 10.0.0.6 {{
  starts epoch {T}; # Tue Nov 14 22:13:20 2023
  ends never;
  hardware ethernet aa:bb:cc:00:00:06;
}}
lease 10.0.0.7 {{
  starts 2 2023/13/14 22:13:20;
  ends 2 2023/11/14 23:13:20;
}}
lease 10.0.0.8 {{
  starts 2 2023/11/14 20:00:00;
  ends 2 2023/11/14 21:00:00;
  binding state free;
}}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_detect() -> None:
    assert detect(KEA4_HEAD) == detect(KEA6_HEAD) == KEA
    assert detect(DHCPD_SAMPLE) == DHCPD and detect("\nlease 10.0.0.1 {\n}\n") == DHCPD
    assert detect(f"{T} aa:bb:cc:dd:ee:ff 10.0.0.9 phone 01:aa:bb:cc:dd:ee:ff\n") == DNSMASQ
    assert detect("duid 00:01:00:01\n") == DNSMASQ
    assert detect("hello world\n") is None and detect("") is None


def test_kea_v4_rows_release_and_bad_lines() -> None:
    text = (
        KEA4_HEAD
        + f"10.0.0.1,aa:bb:cc:00:00:01,01:aa:bb:cc:00:00:01,3600,{T + 3600},1,0,0,phone&#x2c1,0,\n"
        + f"10.0.0.1,aa:bb:cc:00:00:01,01:aa:bb:cc:00:00:01,0,{T},1,0,0,phone&#x2c1,0,\n"  # released
        + f"10.0.0.1,aa:bb:cc:00:00:02,,3600,{T + 7200},1,0,0,,0,\n"
        + "10.0.0.300,aa:bb:cc:00:00:03,,3600,1,1,0,0,,0,\n"
        + "10.0.0.4,zz,,3600,1,1,0,0,,0,\n"
        + "10.0.0.5,aa:bb:cc:00:00:05,,x,1,1,0,0,,0,\n"
        + "10.0.0.6\n"
    )
    got = read_leases("k.csv", text, 0)
    assert got.skipped == 4 and [p.split(": ")[0] for p in got.problems] == ["k.csv:5", "k.csv:6", "k.csv:7", "k.csv:8"]
    assert "invalid address" in got.problems[0] and "invalid hwaddr" in got.problems[1]
    first = got.leases[0]
    assert (first.start_us, first.end_us, first.hostname, first.client_id) == (
        T * US,
        (T + 3600) * US,
        "phone,1",
        "01:aa:bb:cc:00:00:01",
    )
    book = LeaseBook()
    for lease in got.leases:
        book.add(lease)
    # The release row merges into the first holder's span; the next holder starts where its lease starts.
    assert len(book) == 2
    assert book.at("10.0.0.1", T * US).mac == "aa:bb:cc:00:00:01"  # type: ignore[union-attr]
    assert book.at("10.0.0.1", (T + 3600) * US - 1).mac == "aa:bb:cc:00:00:01"  # type: ignore[union-attr]
    assert book.at("10.0.0.1", (T + 3600) * US).mac == "aa:bb:cc:00:00:02"  # type: ignore[union-attr]
    assert book.at("10.0.0.1", T * US - 1) is None and book.at("10.0.0.1", (T + 7200) * US) is None


def test_kea_v6_duid_and_hwaddr() -> None:
    duid = "00:03:00:01:aa:bb:cc:00:00:10"
    text = KEA6_HEAD + f"2001:db8::10,{duid},3600,{T + 3600},1,1800,0,1,128,0,0,laptop,aa:bb:cc:00:00:10,0,,1,2\n"
    (lease,) = read_leases("k6.csv", text, 0).leases
    assert (lease.address, lease.mac, lease.client_id, lease.hostname) == (
        "2001:db8::10",
        "aa:bb:cc:00:00:10",
        "00:03:00:01:aa:bb:cc:00:00:10",
        "laptop",
    )


def test_dhcpd_blocks() -> None:
    got = read_leases("dhcpd.leases", DHCPD_SAMPLE, 0)
    by = {lease.address: lease for lease in got.leases}
    assert set(by) == {"10.0.0.5", "10.0.0.6"}  # .7 has a bad date; .8 is free and names nobody
    five = by["10.0.0.5"]
    assert (five.start_us, five.end_us, five.mac, five.hostname) == (
        T * US,
        (T + 3600) * US,
        "aa:bb:cc:00:00:05",
        "pixel-7",
    )
    assert five.client_id == "01:aa:bb:cc:00:00:05" and five.where == "dhcpd.leases:4"
    assert by["10.0.0.6"].start_us == T * US and by["10.0.0.6"].end_us > (T + 10**9) * US  # ends never
    assert got.skipped == 1 and got.problems[0].startswith("dhcpd.leases:18: lease 10.0.0.7: starts/ends")
    torn = read_leases("d", DHCPD_SAMPLE + "lease 10.0.0.9 {\n  starts 2 2023/11/14 22:13:20;\n", 0)
    assert torn.skipped == 2 and "unterminated lease block" in torn.problems[-1]


def test_dnsmasq_learns_over_time(tmp_path: Path) -> None:
    path = tmp_path / "dnsmasq.leases"
    _write(path, f"{T + 3600} aa:bb:cc:00:00:01 10.0.0.1 phone 01:aa:bb:cc:00:00:01\nbad line\n")
    os.utime(path, (T, T))
    files = LeaseFiles([str(path)])
    files.refresh()
    assert files.skipped == 1 and files.problems == [f"{path}:2: expected 'expiry mac address hostname clientid'"]
    # dnsmasq keeps only current leases: the next holder replaces the line; what was learned stays.
    _write(path, f"{T + 9000} aa:bb:cc:00:00:02 10.0.0.1 * *\n0 aa:bb:cc:00:00:03 10.0.0.2 printer *\n")
    os.utime(path, (T + 5400, T + 5400))
    files.refresh()
    book = files.book
    assert book.at("10.0.0.1", (T + 60) * US).hostname == "phone"  # type: ignore[union-attr]
    assert book.at("10.0.0.1", (T + 5400) * US).mac == "aa:bb:cc:00:00:02"  # type: ignore[union-attr]
    assert book.at("10.0.0.1", (T + 5000) * US) is None  # between: phone's lease expired, the next not yet seen
    assert book.at("10.0.0.2", (T + 10**8) * US).hostname == "printer"  # type: ignore[union-attr]  # expiry 0


def test_follower_reads_appends_and_keeps_history_over_rewrites(tmp_path: Path) -> None:
    path = _write(tmp_path / "kea-leases4.csv", KEA4_HEAD + f"10.0.0.1,aa:bb:cc:00:00:01,,3600,{T + 3600},1,0,0,a,0,\n")
    files = LeaseFiles([str(path)])
    assert files.refresh() == 1 and files.refresh() == 0  # unchanged: not read again
    old_book = files.book
    with path.open("a", encoding="utf-8") as fh:  # Kea appends; the last line is still being written
        fh.write(f"10.0.0.2,aa:bb:cc:00:00:02,,3600,{T + 3600},1,0,0,b,0,\n10.0.0.3,aa:bb:cc:00")
    assert files.refresh() == 1 and files.skipped == 0
    assert old_book.at("10.0.0.2", T * US) is None  # a reader holding the old book saw a whole one
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f":00:03,,3600,{T + 3600},1,0,0,c,0,\n")
    assert files.refresh() == 1 and files.book.at("10.0.0.3", T * US).hostname == "c"  # type: ignore[union-attr]
    # Kea's lease file cleanup rewrites the file (a new inode) with only the current leases: history is kept.
    tmp = tmp_path / "kea-leases4.csv.2"
    _write(tmp, KEA4_HEAD + f"10.0.0.1,aa:bb:cc:00:00:09,,3600,{T + 9000},1,0,0,z,0,\n")
    tmp.replace(path)
    files.refresh()
    book = files.book
    assert book.at("10.0.0.1", T * US).hostname == "a"  # type: ignore[union-attr]
    assert book.at("10.0.0.1", (T + 5500) * US).hostname == "z"  # type: ignore[union-attr]
    assert book.at("10.0.0.2", T * US).hostname == "b"  # type: ignore[union-attr]
    path.unlink()
    files.refresh()
    assert files.book is book and "cannot read lease file" in files.problems[-1]  # last good leases kept


@pytest.mark.parametrize("before", ["\ufeff", "not,a,header\n"], ids=["bom", "bad-first-line"])
def test_follower_reads_only_the_appended_lines_after_a_bom_or_a_bad_first_line(tmp_path: Path, before: str) -> None:
    """The header Kea's lines are read by is the one the reader found, wherever it is: with a BOM or a bad line in
    front of it, each append made the follower read the whole file again (up to 512 MB on every change)."""
    path = _write(
        tmp_path / "kea-leases4.csv", before + KEA4_HEAD + f"10.0.0.1,aa:bb:cc:00:00:01,,3600,{T + 3600},1,0,0,a,0,\n"
    )
    files = LeaseFiles([str(path)])
    assert files.refresh() == 1
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"10.0.0.2,aa:bb:cc:00:00:02,,3600,{T + 3600},1,0,0,b,0,\n")
    assert files.refresh() == 1  # the line appended, not both leases again
    assert files.book.at("10.0.0.2", T * US).hostname == "b"  # type: ignore[union-attr]


def test_book_is_bounded() -> None:
    book = LeaseBook(max_leases=100)
    for i in range(1000):
        book.add(
            Lease(f"10.0.{i // 256}.{i % 256}", i * US, (i + 10) * US, mac=f"02:00:00:00:{i // 256:02x}:{i % 256:02x}")
        )
    assert len(book) <= 100 and book.dropped == 1000 - len(book)
    assert book.at("10.0.3.231", 999 * US) is not None  # the newest are kept
    assert book.at("10.0.0.0", 0) is None


def test_load_errors_and_cli(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.csv:1: no such lease file"):
        load([str(tmp_path / "nope.csv")])
    out = run_cli("report", "--events", str(tmp_path), "--leases", str(tmp_path / "nope.csv"))
    assert out.returncode == 1 and out.stderr.strip().endswith("no such lease file")
    bad = _write(tmp_path / "l.csv", KEA4_HEAD + "10.0.0.1,aa,,x,1,1,0,0,,0,\n")
    out = run_cli("report", "--events", str(tmp_path), "--leases", str(bad), "--format", "json")
    assert out.returncode == 0 and f"skipped 1 malformed lease line(s); first: {bad}:2:" in out.stderr


def test_dhcpd_times_are_utc() -> None:
    got = read_leases(
        "d", "lease 10.0.0.1 {\n starts 4 2024/02/29 23:59:59;\n ends never;\n hardware ethernet 0:1:2:3:4:5;\n}\n", 0
    )
    (lease,) = got.leases
    assert lease.start_us == int(datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC).timestamp()) * US
    assert lease.mac == "00:01:02:03:04:05"
