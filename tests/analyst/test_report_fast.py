"""The report's fast paths give what the plain rules give (enforcer/analyst/report.py, identity.py, leases.py).

- ``_Counter.block`` finds the writer's lines of a block with one search (``lines.WRITER_LINES``): on a file of writer
  lines mixed with every kind of odd line, ``scan_range`` counts exactly what it counts when every line takes
  ``lines.parse_event_line`` (the search disabled).
- ``LeaseBook.span``: ``at`` gives the same lease at every time of the interval it returns (renewals, a change of
  holder, a gap, an address with no lease).
- ``Identifier`` keeps per address the lease interval of its last event: across a lease change, a renewal and a
  book that changes afterwards, ``identify`` and ``identify_span`` give what a fresh ``Identifier`` gives.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enforcer.analyst import lines as lines_mod
from enforcer.analyst import report as report_mod
from enforcer.analyst.identity import Identifier
from enforcer.analyst.inventory import Device, Inventory
from enforcer.analyst.leases import Lease, LeaseBook
from enforcer.analyst.report import ReportStats, Selection, enforcement_of, scan_range
from enforcer.policy import Policy
from tests.analyst.analyst_helpers import dns_hit, generate

US = 1_000_000
T0 = datetime(2023, 11, 6, 9, 0, tzinfo=UTC)


def _us(dt: datetime) -> int:
    return int(dt.timestamp()) * US + dt.microsecond


def _odd_lines(policy: Policy) -> list[bytes]:
    """Lines the block search must leave to the line rule, each next to writer lines."""
    w = dns_hit(policy, "long.weixin.qq.com", "10.9.0.50", T0).to_json()
    leap = w.replace(w[15:42], "2023-12-31T23:59:60.000000Z")  # matches the pattern; not a time
    early = w.replace(w[15:42], "1969-12-31T23:59:59.000000Z")  # matches the pattern; before 1970
    bad_day = w.replace(w[15:42], "2023-02-30T10:00:00.000000Z")
    device = dns_hit(policy, "long.weixin.qq.com", "10.9.0.50", T0, device_id="bob-laptop").to_json()
    return [
        b"",
        b"   ",
        w.encode() + b"\r",  # CRLF: stripped by the line rule
        b"  " + w.encode(),
        b'{"not": "an event"}',
        b"{broken json",
        leap.encode(),
        early.encode(),
        bad_day.encode(),
        device.encode(),  # device.id: the full parse
        w.encode(),  # a duplicate of the CRLF line's event
        w[:200].encode() + w.encode(),  # torn: the event at its end counts
        w.replace("10.9.0.50", "10.9.0.5\u00e9").encode(),  # non-ASCII, still a writer line
        # In a block of its own these would be clean but for them (lines.clean_block): each makes its block take
        # the strict pattern, where the line rule judges them: a tab inside a string (not JSON), an escape (JSON,
        # the same name), and a writer line cut in two inside a string, which WRITER_LINES_CLEAN matches as one.
        w.replace("long.weixin", "long\tweixin").encode(),
        w.replace("long.weixin", "long\\u002eweixin").encode(),
        (w[: w.index('"kind":"') + 9] + "\n" + w[w.index('"kind":"') + 9 :]).encode(),
    ]


def _tallies(t: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
    return {k: [*v[:4], sorted(v[4]), *v[5:]] for k, v in t.items()}


def _stats(s: ReportStats) -> tuple[Any, ...]:
    return (s.lines, s.events, s.invalid, s.recovered, s.duplicates, s.skipped, s.first_invalid, s.apps, list(s.keys))


@pytest.mark.parametrize("invalid_utf8", [False, True])
def test_block_search_counts_what_the_line_rule_counts(
    tmp_path: Path, policy: Policy, monkeypatch: pytest.MonkeyPatch, invalid_utf8: bool
) -> None:
    rnd = random.Random(5)
    lines = [e.to_json().encode() for e in generate(policy, 3000, seed=91)]
    for odd in _odd_lines(policy):
        lines.insert(rnd.randrange(len(lines)), odd)
    if invalid_utf8:  # a block that is not UTF-8: every line of it takes the line rule
        lines.insert(1500, b'{"@timestamp":"\xff\xfe"}')
    lines.append(lines[10][:120])  # the unterminated last line: torn
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines))
    book = LeaseBook()
    book.add(Lease("10.9.0.50", _us(T0 - timedelta(hours=1)), _us(T0 + timedelta(hours=1)), mac="02:00:00:00:00:01"))
    select = Selection(enforcement_of(policy), identifier=Identifier(Inventory(), book))
    monkeypatch.setattr(lines_mod, "READ_BYTES", 64 * 1024)  # many blocks, lines cut at their edges

    fast = scan_range(str(path), 0, None, select)
    for pattern in ("WRITER_LINES", "WRITER_LINES_CLEAN"):  # no line found by the search
        monkeypatch.setattr(report_mod, pattern, re.compile(r"(?!)"))
    select_slow = Selection(enforcement_of(policy), identifier=Identifier(Inventory(), book))
    slow = scan_range(str(path), 0, None, select_slow)

    assert _tallies(fast[0]) == _tallies(slow[0])
    assert _stats(fast[1]) == _stats(slow[1])
    # The files hold what the test means to check: events counted, duplicates, torn and skipped lines.
    st = fast[1]
    assert st.events > 2900 and st.duplicates >= 1 and st.recovered >= 1
    assert st.skipped.get("not_event", 0) >= 4 and st.skipped.get("invalid_json", 0) >= 1
    assert st.skipped.get("torn", 0) >= 1


def test_the_clean_pattern_finds_what_the_strict_one_finds_and_stops_at_what_it_refuses(policy: Policy) -> None:
    w = dns_hit(policy, "long.weixin.qq.com", "10.9.0.50", T0).to_json()
    block = "\n".join(e.to_json() for e in generate(policy, 200, seed=3)) + "\n" + w
    assert lines_mod.clean_block(block.encode())
    rows = lines_mod.WRITER_LINES.findall(block)
    assert len(rows) == 201 and lines_mod.WRITER_LINES_CLEAN.findall(block) == rows
    # What only the block check keeps from the clean pattern: a control character or a backslash in a string.
    for odd in ("long\tweixin", "long\\u002eweixin", "long\x01weixin"):
        line = w.replace("long.weixin", odd)
        assert not lines_mod.clean_block(line.encode()) and not lines_mod.WRITER_LINES.findall(line)
        assert lines_mod.WRITER_LINES_CLEAN.findall(line)
    # A line cut inside a string: one clean match over both lines, fewer matches than lines (report._Counter.block).
    k = w.index('"kind":"') + 9
    cut = "\n".join([w, w[:k], w[k:], w])
    assert lines_mod.clean_block(cut.encode()) and len(lines_mod.WRITER_LINES.findall(cut)) == 2
    assert len(lines_mod.WRITER_LINES_CLEAN.findall(cut)) == 3 < cut.count("\n") + 1


def test_a_clean_block_is_one_without_a_backslash_or_a_control_character_but_newlines() -> None:
    line = b'{"a":"bc"}\n{"d":"e"}\n'
    assert lines_mod.clean_block(line) and lines_mod.clean_block(b"") and lines_mod.clean_block(b"\n\n")
    for c in range(256):
        for at in (0, 7, len(line) - 1):
            block = line[:at] + bytes([c]) + line[at:]
            assert lines_mod.clean_block(block) is (c == 0x0A or (c >= 0x20 and c != 0x5C)), (c, at)
    assert len(lines_mod.NOT_CLEAN) == 32


@pytest.mark.parametrize("block", [b"", b"\n", b"a", b"a\n", b"\n\na\nb", b"{}\n" * 1000, b"x" * 5000 + b"\n"])
def test_newlines_are_counted_as_count_does(block: bytes) -> None:
    from enforcer.analyst.report import _newlines

    assert _newlines(block) == block.count(b"\n")


def _book(rnd: random.Random) -> LeaseBook:
    book = LeaseBook()
    t = 1_000 * US
    for address in ("10.0.0.1", "10.0.0.2"):
        for _ in range(30):
            t += rnd.choice((0, 1, 5, 50)) * US  # same start, back to back, gaps
            holder = rnd.choice(("02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"))
            end = t + rnd.choice((1, 10, 100)) * US
            book.add(Lease(address, t, end, mac=holder))  # the same holder again: a renewal, merged
            t = end - rnd.choice((0, 2)) * US
    return book


def test_span_gives_the_lease_that_at_gives_over_its_whole_interval() -> None:
    rnd = random.Random(3)
    book = _book(rnd)
    checked = 0
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):  # 10.0.0.3: no lease at all
        for ts in range(0, 6_000 * US, 7 * US + 1):
            lease, lo, hi = book.span(address, ts)
            assert lo <= ts < hi
            assert lease is book.at(address, ts)
            for probe in (lo, hi - 1, (lo + hi) // 2):
                if -(1 << 61) < probe < 1 << 61:
                    assert book.at(address, probe) is lease, (address, ts, probe)
                    checked += 1
    assert checked > 1000


def test_identify_with_kept_intervals_equals_a_fresh_identifier() -> None:
    rnd = random.Random(4)
    book = _book(rnd)
    inventory = Inventory([Device("", "phone", "Alice", "Sales", mac="02:00:00:00:00:01")])
    kept = Identifier(inventory, book)
    times = sorted(rnd.randrange(0, 6_000 * US) for _ in range(3000))
    sources = set()
    for ts in times:  # in time order, as a file gives them: most fall in the previous event's interval
        for address in ("10.0.0.1", "::ffff:10.0.0.2", "10.0.0.3"):
            want = Identifier(inventory, book).identify(address, ts)
            assert kept.identify(address, ts) == want
            lo, hi, ident = kept.identify_span(address, ts)
            assert ident == want and lo <= ts < hi
            sources.add(want.source)
    assert sources == {"lease", "address"}
    # The book changes after the identifier was made: what it kept must not be used.
    ts = times[-1]
    book.add(Lease("10.0.0.3", ts - 10 * US, ts + 10 * US, mac="02:00:00:00:00:01"))
    assert kept.identify("10.0.0.3", ts).key == "mac:02:00:00:00:00:01"
    assert kept.identify("10.0.0.3", ts).device == "phone"


def test_normal_mac_canonical_shortcut_equals_the_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """``inventory.normal_mac`` returns an already canonical MAC after one match: the same as the full checks."""
    from enforcer.analyst import inventory

    rnd = random.Random(6)
    cases = ["aa:bb:cc:dd:ee:ff", "AA-BB-CC-DD-EE-FF", "aabb.ccdd.eeff", "a:b:c", "aa", " aa:bb ", "aa:bb:", ":aa"]
    cases += [":".join(["0a"] * 20), ":".join(["0a"] * 21), "gg:00:11:22:33:44"]
    cases += ["".join(rnd.choice("0123456789abcdefABG:-. ") for _ in range(rnd.randrange(12))) for _ in range(5000)]
    quick = [inventory.normal_mac(c) for c in cases]
    monkeypatch.setattr(inventory, "_CANONICAL_MAC", re.compile(r"(?!)"))
    assert quick == [inventory.normal_mac(c) for c in cases]
    assert quick[0] == "aa:bb:cc:dd:ee:ff" and quick[9] is None
