"""``enforcer report``: figures against an independent count, inventory matching, bad lines, the CLI formats."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from enforcer.analyst.files import event_files
from enforcer.analyst.identity import Identifier
from enforcer.analyst.inventory import Inventory
from enforcer.analyst.report import build_report, enforcement_of, pairs_of, parse_time, stream_report
from enforcer.config import ConfigError
from tests.analyst.analyst_helpers import (
    CLIENTS,
    INVENTORY_CSV,
    expected_device,
    expected_report,
    generate,
    ts,
    write_events,
)
from tests.conftest import BLOCKLISTS, ROOT


def _rows(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["client"], r["app"]): r for r in report["clients"]}


def _bare(rows: dict[tuple[str, str], dict]) -> dict[tuple[str, str], dict]:
    """Expected rows without an inventory: every client identified by its address alone."""
    return {k: {**v, "device": None, "owner": None, "unit": None, "identity": "address"} for k, v in rows.items()}


def table_rows(text: str) -> list[dict[str, str]]:
    """The rows of the first table after the apps table in ``enforcer report --format table`` output, by column: the
    dashes line under the header gives each column's span (cells may hold spaces)."""
    lines = text.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("CLIENT")]
    i = heads[0]
    dashes = lines[i + 1]
    spans, pos = [], 0
    for part in dashes.split("  "):
        spans.append((pos, pos + len(part)))
        pos += len(part) + 2
    names = [lines[i][a:b].strip() for a, b in spans]
    out = []
    for line in lines[i + 2 :]:
        if not line.strip():
            break
        out.append({n: line[a:b].strip() for n, (a, b) in zip(names, spans, strict=True)})
    return out


def test_report_matches_independent_count(tmp_path: Path, policy, inventory_file: Path) -> None:
    events = generate(policy, 3000, seed=1)
    write_events(tmp_path / "events.jsonl", events)
    tallies, stats = stream_report(
        [tmp_path / "events.jsonl"],
        enforcement=enforcement_of(policy),
        identifier=Identifier(Inventory.load(inventory_file)),
    )
    report = build_report(tallies)
    expected = expected_report(policy, events)
    assert stats.invalid == 0 and stats.events == 3000
    assert _rows(report) == expected
    # The data covers both sides of the effective date, both address families and every inventory depth.
    assert any(r["enforced_attempts"] for r in expected.values())
    assert any(r["attempts"] > r["enforced_attempts"] > 0 for r in expected.values())
    # Bursts: some rows have hits close together (fewer attempts than hits), and attempts never exceed hits.
    assert any(r["attempts"] < r["hits"] for r in expected.values())
    assert all(r["attempts"] <= r["hits"] and r["enforced_attempts"] <= r["enforced_hits"] for r in expected.values())
    assert {r["client"] for r in expected.values()} == set(CLIENTS)
    assert {r["device"] for r in expected.values()} == {
        "phone-0007",
        "lab-tablets",
        "pool-hq",
        "v6-team",
        "v6-fleet",
        None,
    }
    # Exempt clients only ever produce monitor events: never enforced.
    assert all(r["enforced_attempts"] == 0 for (c, _), r in expected.items() if c.startswith("10.99."))
    apps = {a["app"]: a for a in report["apps"]}
    for app in ("wechat", "kaspersky"):
        mine = [r for (c, a), r in expected.items() if a == app]
        assert apps[app]["attempts"] == sum(r["attempts"] for r in mine)
        assert apps[app]["hits"] == sum(r["hits"] for r in mine)
        assert apps[app]["clients"] == len(mine)
        assert apps[app]["first_seen"] == min(r["first_seen"] for r in mine)
        assert apps[app]["last_seen"] == max(r["last_seen"] for r in mine)


def test_report_filters(tmp_path: Path, policy) -> None:
    events = generate(policy, 2000, seed=2)
    write_events(tmp_path / "events.jsonl", events)
    eff = policy.apps["wechat"].effective
    since, until = eff - timedelta(days=2), eff + timedelta(days=3)
    pairs, _ = stream_report(
        [tmp_path / "events.jsonl"],
        enforcement=enforcement_of(policy),
        since=ts(since),
        until=ts(until),
        apps=["wechat"],
    )
    got = _rows(build_report(pairs))
    want = _bare(expected_report(policy, events, since=since, until=until, apps={"wechat"}))
    assert got == want and want


def test_inventory_longest_prefix(tmp_path: Path, inventory_file: Path) -> None:
    inv = Inventory.load(inventory_file)
    for client in [*CLIENTS, "10.1.2.255", "10.2.0.1", "2001:db8:1:2:ffff::1", "::1"]:
        dev = inv.lookup(client)
        assert (dev.device if dev else None) == expected_device(client), client
    assert inv.lookup("::ffff:10.1.2.7").device == "phone-0007"  # IPv4-mapped IPv6 client
    assert inv.lookup("not-an-ip") is None
    row = inv.lookup("10.1.2.7")
    assert (row.owner, row.unit) == ("Alice Martin", "Finance")
    bad = tmp_path / "bad.csv"
    bad.write_text(INVENTORY_CSV + "10.300.0.0/16,x,y,z\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.csv:7: invalid CIDR"):
        Inventory.load(bad)


def test_invalid_and_torn_lines_skipped_and_counted(tmp_path: Path, policy) -> None:
    events = generate(policy, 50, seed=3)
    lines = [e.to_json() for e in events]
    path = tmp_path / "events.jsonl"
    torn = lines[10][: len(lines[10]) // 2]  # a crash mid-write ...
    text = "\n".join(lines[:10]) + "\n" + torn + lines[11] + "\n"  # ... then the next append on the same line
    text += "not json at all\n" + '{"@timestamp": "2023-11-01T00:00:00Z"}\n' + "[1, 2]\n" + "\n"
    text += "  \n" + lines[12] + "\r\n"  # a blank line with spaces and a CRLF line (edited on Windows)
    text += "\n".join(lines[13:]) + "\n" + lines[0][:30]  # and a torn last line
    path.write_text(text, encoding="utf-8")
    pairs, stats = stream_report([path], enforcement=enforcement_of(policy))
    survivors = events[:10] + events[11:]
    assert _rows(build_report(pairs)) == _bare(expected_report(policy, survivors))
    assert stats.invalid == 5 and stats.recovered == 1
    assert stats.first_invalid == f"{path}:11"


def test_flat_dotted_keys(tmp_path: Path, policy) -> None:
    ev = generate(policy, 1, seed=4)[0]
    doc = ev.to_ecs()
    flat = {"@timestamp": doc["@timestamp"]}
    for key, value in doc.items():
        if isinstance(value, dict):
            for k2, v2 in value.items():
                flat[f"{key}.{k2}"] = v2
    path = tmp_path / "flat.jsonl"
    path.write_text(json.dumps(flat) + "\n", encoding="utf-8")
    pairs, stats = stream_report([path], enforcement=enforcement_of(policy))
    assert stats.invalid == 0
    assert list(pairs_of(pairs)) == [(ev.source_ip, ev.app)]


def test_folder_and_rotations_read_once(tmp_path: Path, policy) -> None:
    events = generate(policy, 1500, seed=5)
    w = write_events(tmp_path / "events.jsonl", events, every=100, max_bytes=60_000, backups=20)
    files = event_files([tmp_path, tmp_path / "events.jsonl"])
    assert len(files) > 3 and files[-1].name == "events.jsonl"  # rotated, oldest first, the live file last
    assert w.written == 1500
    pairs, stats = stream_report([tmp_path, tmp_path / "events.jsonl"], enforcement=enforcement_of(policy))
    assert stats.events == 1500
    assert sum(v[0] for v in pairs.values()) == 1500


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enforcer", "report", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_cli_report_formats(tmp_path: Path, policy, inventory_file: Path) -> None:
    events = generate(policy, 1200, seed=6)
    write_events(tmp_path / "ev" / "events.jsonl", events, every=100, max_bytes=100_000, backups=20)
    expected = expected_report(policy, events)
    base = ["--events", str(tmp_path / "ev"), "--inventory", str(inventory_file), "--blocklist", str(BLOCKLISTS)]

    out = _cli(*base, "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) == {"generated_at", "since", "until", "attempt_window_seconds", "apps", "clients", "bypass"}
    assert doc["attempt_window_seconds"] == 60 and doc["bypass"] == []
    assert _rows(doc) == expected
    assert doc["since"] is None and doc["generated_at"].endswith("Z")

    out = _cli(*base, "--format", "csv")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert list(rows[0]) == [
        "client",
        "device",
        "owner",
        "unit",
        "identity",
        "mac",
        "user",
        "app",
        "attempts",
        "hits",
        "enforced_attempts",
        "enforced_hits",
        "first_seen",
        "last_seen",
        "section",
    ]
    assert {(r["client"], r["app"]): r for r in rows} == {
        k: {kk: ("" if v.get(kk) is None else str(v[kk])) for kk in rows[0]} | {"section": "clients"}
        for k, v in expected.items()
    }

    out = _cli(*base, "--format", "table", "--app", "kaspersky", "--since", "2023-10-30")
    assert out.returncode == 0, out.stderr
    table = out.stdout.splitlines()
    assert table[0].startswith("Compliance report") and "since 2023-10-30T00:00:00.000000Z" in table[0]
    want = expected_report(policy, events, since=datetime(2023, 10, 30, tzinfo=UTC), apps={"kaspersky"})
    assert {(r["CLIENT"], r["APP"]): r for r in table_rows(out.stdout)} == {
        k: {
            "CLIENT": v["client"],
            "DEVICE": v["device"] or "-",
            "OWNER": v["owner"] or "-",
            "UNIT": v["unit"] or "-",
            "IDENTITY": v["identity"],
            "APP": v["app"],
            "ATTEMPTS": str(v["attempts"]),
            "HITS": str(v["hits"]),
            "ENFORCED": str(v["enforced_attempts"]),
            "FIRST SEEN": v["first_seen"],
            "LAST SEEN": v["last_seen"],
        }
        for k, v in want.items()
    }


def test_cli_report_errors(tmp_path: Path) -> None:
    out = _cli("--events", str(tmp_path / "missing.jsonl"))
    assert out.returncode == 1 and out.stderr.strip().endswith("no such file or folder")
    (tmp_path / "e.jsonl").write_text("", encoding="utf-8")
    out = _cli("--events", str(tmp_path / "e.jsonl"), "--since", "yesterday-ish")
    assert out.returncode == 1 and "invalid time" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = _cli("--events", str(tmp_path / "e.jsonl"), "--format", "json")
    assert out.returncode == 0 and json.loads(out.stdout)["clients"] == []
    for workers in ("0", "-3", "257", "two"):
        out = _cli("--events", str(tmp_path / "e.jsonl"), "--workers", workers)
        assert out.returncode == 2 and "argument --workers:" in out.stderr, workers


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        # An Excel CSV in a Windows code page (a French owner name), and one saved as "Unicode text" (UTF-16).
        (b"device,owner,unit,cidr\nphone,H\xe9l\xe8ne Roy,Finances,10.0.0.1/32\n", "inv.csv:2: inventory is not UTF-8"),
        # The same after a BOM: the line and the byte are counted in the file, not after the BOM.
        (
            b"\xef\xbb\xbfdevice,owner,unit,cidr\nphone,H\xe9l\xe8ne Roy,Finances,10.0.0.1/32\n",
            "inv.csv:2: inventory is not UTF-8 text (byte 0xe9",
        ),
        ("device,owner,unit,cidr\n".encode("utf-16"), "inv.csv:1: inventory is not UTF-8 text (it is UTF-16"),
        (None, "inv.csv:1: cannot read inventory: not a regular file (a FIFO)"),
        # A field over the csv module's limit (csv.Error)
        (b'device,owner,unit,cidr\nphone,"' + b"x" * 200_000 + b'",u,10.0.0.1/32\n', "inv.csv:2: not a CSV line"),
    ],
    ids=["cp1252", "cp1252-bom", "utf16", "fifo", "huge-field"],
)
def test_cli_unreadable_inventory_is_one_line(tmp_path: Path, content: bytes | None, expected: str) -> None:
    (tmp_path / "e.jsonl").write_text("", encoding="utf-8")
    inv = tmp_path / "inv.csv"
    if content is None:
        os.mkfifo(inv)  # would block a plain open() for ever
    else:
        inv.write_bytes(content)
    out = _cli("--events", str(tmp_path / "e.jsonl"), "--inventory", str(inv))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and expected in out.stderr


def test_parallel_ranges_equal_sequential(tmp_path: Path, policy, monkeypatch: pytest.MonkeyPatch) -> None:
    import enforcer.analyst.report as report_mod

    events = generate(policy, 3000, seed=8)
    lines = [e.to_json() for e in events]
    lines.insert(1234, "garbage in the middle")
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    eff = enforcement_of(policy)
    sequential, seq_stats = stream_report([path], enforcement=eff)
    # Ranges of ~100 KB cut lines anywhere; each line must be counted by exactly one worker.
    monkeypatch.setattr(report_mod, "RANGE_BYTES", 100_000)
    monkeypatch.setattr(report_mod, "PARALLEL_MIN_BYTES", 0)
    assert len(report_mod._ranges([path], True)) > 10
    parallel, par_stats = stream_report([path], enforcement=eff, workers=2)
    assert pairs_of(parallel) == pairs_of(sequential)
    assert _rows(build_report(parallel)) == _rows(build_report(sequential)) == _bare(expected_report(policy, events))
    assert (par_stats.events, par_stats.invalid) == (seq_stats.events, seq_stats.invalid) == (3000, 1)
    assert seq_stats.first_invalid == f"{path}:1235"
    assert par_stats.first_invalid and par_stats.first_invalid.startswith(f"{path}:+")


def test_report_workers_run_with_the_bulk_readers_collector(policy) -> None:
    """A report worker (a real pool process, as ``stream_report`` starts it) has ``lines.GC_THRESHOLDS`` and its
    Selection frozen out of the collections; Python's defaults cost it 6 % of its instructions."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import enforcer.analyst.report as report_mod
    from enforcer.analyst.lines import GC_THRESHOLDS

    select = report_mod.Selection(enforcement_of(policy))
    with ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=report_mod._worker_init,
        initargs=(select,),
    ) as pool:
        threshold, frozen = pool.submit(_collector).result(timeout=60)
    assert tuple(threshold) == GC_THRESHOLDS != (700, 10, 10)  # Python's defaults, which a new process starts with
    assert frozen > 1000  # the worker's modules and its Selection


def _collector() -> tuple[tuple[int, int, int], int]:
    import gc

    return gc.get_threshold(), gc.get_freeze_count()


@pytest.mark.parametrize(("n", "workers"), [(1, 2), (3, 2), (8, 2), (20, 2), (91, 2), (91, 4), (400, 2)])
def test_parallel_tasks_take_every_range_once_in_order_and_shrink_toward_the_end(n: int, workers: int) -> None:
    import enforcer.analyst.report as report_mod

    ranges = [("f", i, i + 1) for i in range(n)]
    groups = report_mod._groups(ranges, workers)
    sizes = [len(g) for g in groups]
    assert [r for g in groups for r in g] == ranges
    assert sizes == sorted(sizes, reverse=True) and max(sizes) <= report_mod.RANGES_PER_TASK
    assert len(groups) >= min(n, 4 * workers)  # a small input still gives every worker several tasks
    # The last task of each worker is small: no worker is left with a long task while the other has none.
    assert all(size <= 2 for size in sizes[-workers:])
    if n >= 91:
        assert sizes[0] >= 5 and len(groups) <= n // 3  # large tasks first: few results for the main process


def test_parallel_duplicates_across_ranges_are_found_in_the_workers_key_files(
    tmp_path: Path, policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers write their sorted fingerprints to a temporary folder; an event in two ranges is found there (the
    report then takes one sequential pass), and the folder is gone afterwards."""
    import tempfile

    import enforcer.analyst.report as report_mod

    events = generate(policy, 2000, seed=12)
    lines = [e.to_json() for e in events]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([*lines, *lines[:40]]) + "\n", encoding="utf-8")  # 40 events again, at the end
    unique = tmp_path / "unique.jsonl"
    unique.write_text("\n".join(lines) + "\n", encoding="utf-8")
    eff = enforcement_of(policy)
    sequential, seq_stats = stream_report([path], enforcement=eff)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(report_mod, "RANGE_BYTES", 100_000)
    monkeypatch.setattr(report_mod, "PARALLEL_MIN_BYTES", 0)
    for source, dupes in ((path, 40), (unique, 0)):
        assert len(report_mod._ranges([source], True)) > 5
        parallel, par_stats = stream_report([source], enforcement=eff, workers=2)
        assert (par_stats.events, par_stats.duplicates) == (2000, dupes)
        assert _rows(build_report(parallel)) == _rows(build_report(sequential))
        assert list(temp.iterdir()) == []  # the workers' key files removed with their folder
    assert (seq_stats.events, seq_stats.duplicates) == (2000, 40)


def test_parallel_duplicates_inside_one_range_are_counted_once(
    tmp_path: Path, policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker appends each fingerprint to its bucket without a lookup; a range that holds an event twice (a line
    written again right after itself) is found when the range ends and counted again exactly, so the parallel
    report equals the sequential one and counts each repeat as a duplicate."""
    import enforcer.analyst.report as report_mod

    lines = [e.to_json() for e in generate(policy, 2000, seed=13)]
    # Every 97th line written twice, unless a range boundary (every 100,000 bytes) would fall between the two: that
    # repeat would span two ranges, which takes the sequential pass (the lines' lengths depend on the checkout's path).
    doubled: list[str] = []
    offset = 0
    for i, line in enumerate(lines):
        doubled.append(line)
        offset += len(line) + 1
        if i % 97 == 5 and (offset - len(line) - 1) // 100_000 == offset // 100_000:
            doubled.append(line)
            offset += len(line) + 1
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(doubled) + "\n", encoding="utf-8")
    eff = enforcement_of(policy)
    sequential, seq_stats = stream_report([path], enforcement=eff)
    monkeypatch.setattr(report_mod, "RANGE_BYTES", 100_000)
    monkeypatch.setattr(report_mod, "PARALLEL_MIN_BYTES", 0)
    assert len(report_mod._ranges([path], True)) > 5

    def no_sequential_pass(*_args: object, **_kw: object) -> None:
        raise AssertionError("the workers' repeats became the sequential pass over every file")

    # No pair is split by a range boundary, so only the workers' own check of each range is exercised.
    starts = list(itertools.accumulate((len(x) + 1 for x in doubled), initial=0))
    pairs = [i for i in range(1, len(doubled)) if doubled[i] == doubled[i - 1]]
    assert len(pairs) > 10
    assert all(starts[i - 1] // 100_000 == starts[i] // 100_000 for i in pairs)
    monkeypatch.setattr(report_mod, "scan_range", no_sequential_pass)
    parallel, par_stats = stream_report([path], enforcement=eff, workers=2)
    dupes = len(pairs)
    assert (seq_stats.events, seq_stats.duplicates) == (par_stats.events, par_stats.duplicates) == (2000, dupes)
    assert _rows(build_report(parallel)) == _rows(build_report(sequential))


def test_keys_by_bucket_find_repeats_and_read_back_any_share_of_buckets(tmp_path: Path) -> None:
    import random

    from enforcer.analyst.report import KEY_BUCKETS, Keys, _overlap, _read_keys

    rng = random.Random(5)
    values = list({rng.getrandbits(64) - 2**63 for _ in range(5000)})
    keys = Keys.of(values)
    assert not keys.repeats() and sorted(itertools.chain.from_iterable(keys.parts)) == sorted(values)
    assert Keys.of([*values, values[1234]]).repeats()
    name = keys.write(str(tmp_path))
    for lo, hi in ((0, KEY_BUCKETS), (0, 32), (32, 64), (200, KEY_BUCKETS), (255, 256)):
        got = list(_read_keys(name, lo, hi))
        assert len(got) == hi - lo and [list(p) for p in got] == [list(p) for p in keys.parts[lo:hi]]
    other = Keys.of({rng.getrandbits(64) - 2**63 for _ in range(5000)} - set(values)).write(str(tmp_path))
    shared = Keys.of([values[77], 1, 2]).write(str(tmp_path))
    bucket = (values[77] >> 56) % KEY_BUCKETS
    assert not _overlap([name, other])
    assert _overlap([name, other, shared]) and _overlap([name, shared], bucket, bucket + 1)
    assert not _overlap([name, shared], (bucket + 1) % KEY_BUCKETS, (bucket + 1) % KEY_BUCKETS + 1)


def test_parse_time_forms() -> None:
    now = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_time("24h", now) == "2024-02-29T12:00:00.000000Z"
    assert parse_time("7d", now) == "2024-02-23T12:00:00.000000Z"
    assert parse_time("90m", now) == "2024-03-01T10:30:00.000000Z"
    assert parse_time("now", now) == parse_time(" NOW ", now) == "2024-03-01T12:00:00.000000Z"
    # In the writer's own shape but no date: a ValueError naming it (it was a traceback from the report, a 500 from
    # the API).
    for bad in ("2024-02-30T00:00:00.000000Z", "2024-13-45T99:99:99.000000Z"):
        with pytest.raises(ValueError, match="invalid time"):
            parse_time(bad)
    assert parse_time("2023-10-30") == "2023-10-30T00:00:00.000000Z"
    assert parse_time("2023-10-30T00:00:00-04:00") == "2023-10-30T04:00:00.000000Z"
    assert parse_time("2023-10-30T04:00:00Z") == "2023-10-30T04:00:00.000000Z"
    assert parse_time("") is None and parse_time(None) is None
    for bad in ("yesterday", "7x", "2023-13-01", "10"):
        with pytest.raises(ValueError, match="invalid time"):
            parse_time(bad, now)


def test_ranges_cut_exactly_at_line_starts(tmp_path: Path, policy) -> None:
    from enforcer.analyst.identity import merge_tallies
    from enforcer.analyst.report import Selection, scan_range

    lines = [e.to_json() for e in generate(policy, 50, seed=9)]
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line.encode()) + 1)
    eff = Selection(enforcement_of(policy))
    whole, _ = scan_range(str(path), 0, None, eff)
    # Boundaries at line starts, one byte before, one byte after, and single-line ranges.
    for cuts in ([0, starts[10], starts[20], None], [0, starts[10] - 1, starts[20] + 1, None], [*starts[:-1], None]):
        merged: dict = {}
        total = 0
        for a, b in itertools.pairwise(cuts):
            part, st = scan_range(str(path), a, b, eff)
            merge_tallies(merged, part)
            total += st.events
        assert total == 50 and pairs_of(merged) == pairs_of(whole), cuts
        assert build_report(merged, generated_at="x") == build_report(whole, generated_at="x"), cuts


def test_inventory_with_the_same_range_twice_is_an_error(tmp_path: Path) -> None:
    from enforcer.config import ConfigError

    inv = tmp_path / "inv.csv"
    inv.write_text("cidr,device,owner,unit\n10.0.0.0/24,laptop-1,a,b\n10.0.0.0/24,laptop-2,c,d\n")
    with pytest.raises(ConfigError, match=r"inv.csv:3: 10.0.0.0/24 is already mapped at line 2"):
        Inventory.load(inv)
