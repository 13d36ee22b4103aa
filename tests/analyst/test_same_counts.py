"""``enforcer report`` and the analyst count the same thing (issue 10, item 15).

The same hostile files go through the real ``enforcer report`` CLI and through the real ingester into the store,
read back through the real aiohttp app's ``/api/report``; the figures, the skipped lines by reason and the
duplicates must be identical, and equal to the count made here from what was written.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from enforcer.analyst.lines import MAX_LINE_BYTES
from enforcer.analyst.web import build_app
from enforcer.events import HitEvent
from tests.analyst.analyst_helpers import generate, local_analyst
from tests.conftest import BLOCKLISTS, ROOT


def _flat(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in doc.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _hostile_files(folder: Path, events: list[HitEvent]) -> tuple[int, dict[str, int], int]:
    """Write the files; return (events that must count, skipped lines by reason, duplicates)."""
    folder.mkdir()
    good = [e.to_json() for e in events]
    a: list[bytes] = [line.encode() for line in good[:40]]
    counted = 40
    skipped: dict[str, int] = {}
    dup = 0

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    # Duplicates: the same line again in the same file, and again in another file (a copy left in the folder).
    a += [good[0].encode(), good[1].encode()]
    dup += 2
    # Writer-shaped but not JSON (an unquoted value): the old report's byte fast path counted it.
    a.append(good[40].replace('"kind":"alert"', '"kind":alert').encode())
    skip("invalid_json")
    a.append(b"not json at all")
    skip("invalid_json")
    # Over-size: a real event whose URL makes the line longer than the limit.
    big = events[41]
    big.url_full = "http://dldir1.qq.com/weixin/" + "a" * (MAX_LINE_BYTES + 100)
    a.append(big.to_json().encode())
    skip("oversize")
    # Invalid UTF-8 inside a string: still an event (U+FFFD), for both.
    a.append(good[42].replace("weixin", "we\udcffixin").encode("utf-8", "surrogateescape"))
    counted += 1
    # Missing fields: no rule.id (the old byte fast path did not need it), no ruleset, no @timestamp.
    for key in (("rule", "id"), ("rule", "ruleset")):
        doc = json.loads(good[43])
        del doc[key[0]][key[1]]
        a.append(json.dumps(doc).encode())
        skip("not_event")
    doc = json.loads(good[44])
    del doc["@timestamp"]
    a.append(json.dumps(doc).encode())
    skip("not_event")
    # Wrong types: an address as a number and a string event.type still count (as text); a list ruleset does not.
    doc = json.loads(good[45])
    doc["source"]["ip"] = 167837959
    doc["event"]["type"] = "denied"
    a.append(json.dumps(doc).encode())
    counted += 1
    doc = json.loads(good[46])
    doc["rule"]["ruleset"] = ["wechat"]
    a.append(json.dumps(doc).encode())
    skip("not_event")
    # Times outside 1970..9999 (year 1 with an offset was an OverflowError for both).
    for stamp in ("0001-01-01T00:00:00+01:00", "1969-12-31T23:59:59.000000Z", "2023-13-01T00:00:00.000000Z"):
        doc = json.loads(good[47])
        doc["@timestamp"] = stamp
        a.append(json.dumps(doc).encode())
        skip("not_event")
    # Deep nesting: a RecursionError inside json.loads.
    a.append(b"[" * 100_000 + b"]" * 100_000)
    skip("invalid_json")
    # Flat dotted keys, and the same event nested: one event (same time and id).
    flat = _flat(json.loads(good[48]))
    a.append(json.dumps(flat).encode())
    a.append(good[48].encode())
    counted += 1
    dup += 1
    # No event.id: identical lines are one event, a different line is another.
    doc = json.loads(good[49])
    del doc["event"]["id"]
    a += [json.dumps(doc).encode()] * 2
    doc["source"]["ip"] = "10.20.0.99"
    a.append(json.dumps(doc).encode())
    counted += 2
    dup += 1
    # A torn line (crash mid-write, then an append): the half is skipped, the whole event after it counts.
    a.append(good[50][:70].encode() + good[51].encode())
    skip("torn")
    counted += 1
    # Blank and CRLF lines.
    a += [b"", b"   ", good[52].encode() + b"\r"]
    counted += 1
    (folder / "a.jsonl").write_bytes(b"\n".join(a) + b"\n")
    # The copy: some lines of a.jsonl again, plus new events; its last line is torn for good (rotated file).
    b = [good[5].encode(), good[6].encode(), good[7].encode(), *(line.encode() for line in good[53:60])]
    dup += 3
    counted += 7
    (folder / "b.jsonl.1").write_bytes(b"\n".join(b) + b"\n" + good[60][:90].encode())
    skip("torn")
    return counted, skipped, dup


def _report_cli(folder: Path) -> tuple[dict, str]:
    out = subprocess.run(
        [sys.executable, "-m", "enforcer", "report", "--events", str(folder), "--format", "json",
         "--blocklist", str(BLOCKLISTS)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), out.stderr


def _rows(doc: dict) -> dict:
    return {(r["client"], r["app"]): {k: v for k, v in r.items() if k != "device"} for r in doc["clients"]}


async def test_report_and_analyst_count_the_same_hostile_files(aiohttp_client: Any, tmp_path: Path, policy) -> None:
    events = generate(policy, 70, seed=61)
    counted, skipped, dup = _hostile_files(tmp_path / "ev", events)

    report, stderr = _report_cli(tmp_path / "ev")
    analyst = local_analyst(tmp_path, [str(tmp_path / "ev")])
    try:
        analyst.ingester.poll_once()
        client = await aiohttp_client(build_app(analyst))
        api = await (await client.get("/api/report")).json()
        ing = analyst.ingester
        errors, duplicates, ingested = dict(ing.errors), ing.duplicates, ing.ingested
    finally:
        analyst.close()

    # The same figures, row by row, and the number this test wrote.
    assert _rows(report) == _rows(api)
    assert sum(a["hits"] for a in report["apps"]) == counted == ingested
    # The same skipped lines by reason, and the same duplicates.
    m = re.search(r"skipped (\d+) line\(s\) \(([^;]*);", stderr)
    assert m, stderr
    reported = {k: int(v) for k, v in (part.rsplit(" ", 1) for part in m.group(2).split(", "))}
    assert reported == errors == skipped
    m = re.search(r"(\d+) duplicate event\(s\)", stderr)
    assert m and int(m.group(1)) == duplicates == dup, stderr


def test_same_counts_with_filters_and_parallel_workers(tmp_path: Path, policy, monkeypatch) -> None:
    """A duplicate spread over two workers' ranges is still counted once; filters apply after deduplication."""
    import enforcer.analyst.report as report_mod
    from enforcer.analyst.report import enforcement_of, stream_report

    events = generate(policy, 3000, seed=62)
    lines = [e.to_json() for e in events]
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(lines + lines[:500]) + "\n", encoding="utf-8")  # the first 500 again at the end
    eff = enforcement_of(policy)
    seq, seq_stats = stream_report([path], enforcement=eff)
    monkeypatch.setattr(report_mod, "RANGE_BYTES", 200_000)
    monkeypatch.setattr(report_mod, "PARALLEL_MIN_BYTES", 0)
    par, par_stats = stream_report([path], enforcement=eff, workers=2)
    assert par == seq and seq_stats.events == par_stats.events == 3000
    assert seq_stats.duplicates == par_stats.duplicates == 500
    # No duplicates across ranges: the parallel result stands as computed.
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    par2, st2 = stream_report([path], enforcement=eff, workers=2, apps=["wechat"])
    seq2, _ = stream_report([path], enforcement=eff, apps=["wechat"])
    assert par2 == seq2 and st2.events == sum(1 for e in events if e.app == "wechat")
