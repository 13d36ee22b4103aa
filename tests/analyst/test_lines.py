"""The one line rule (enforcer/analyst/lines.py): the writer-line fast path gives exactly what the JSON parse gives.

The fast path reads the writer's own lines without a JSON parse; it must never accept a line the JSON parse would
judge differently. Checked on writer lines with hostile field values (quotes, backslashes, control characters,
non-ASCII, empty strings, marker-like text) and on random edits of writer lines (hypothesis, bounded).
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enforcer.analyst.lines import _parse, _writer_line, line_blocks, parse_event_line
from enforcer.events import HitEvent
from tests.analyst.analyst_helpers import generate

NASTY = [
    "",
    'a"b',
    "back\\slash",
    "tab\there",
    "nul\x00",
    "ünïcødé",
    "雪",
    "\u2028",
    '"ruleset":"evil"',
    '"type":["denied"]',
    '","source":{"ip":"1.2.3.4"}',
    "plain.example",
]


def _variants(base: list[HitEvent]) -> list[HitEvent]:
    out: list[HitEvent] = []
    fields = ("source_ip", "dns_question_name", "url_domain", "url_full", "tls_server_name", "destination_ip",
              "category", "action", "rule_id", "reference", "observer_hostname", "http_method")  # fmt: skip
    for ev, (field, value) in zip(itertools.cycle(base), itertools.product(fields, NASTY), strict=False):
        clone = HitEvent(**{f: getattr(ev, f) for f in HitEvent.__dataclass_fields__})
        setattr(clone, field, value)
        out.append(clone)
    # Optional parts absent or present in every combination the writer produces.
    for ev in base[:8]:
        for drop in ("source_ip", "dns_question_name", "url_full", "url_domain", "source_port", "category"):
            clone = HitEvent(**{f: getattr(ev, f) for f in HitEvent.__dataclass_fields__})
            setattr(clone, drop, None)
            out.append(clone)
        clone = HitEvent(**{f: getattr(ev, f) for f in HitEvent.__dataclass_fields__})
        clone.tls_server_name, clone.destination_ip, clone.destination_port = "sni.example", "192.0.2.1", 443
        clone.dns_question_name = clone.url_domain = None
        out.append(clone)
    return out


def test_fast_path_equals_the_json_parse_on_writer_lines(policy) -> None:
    events = _variants(generate(policy, 40, seed=81))
    fast_hits = 0
    for ev in events:
        line = ev.to_json().encode("utf-8")
        want = _parse(line, False, False)
        got = parse_event_line(line)
        assert got == want, line[:300]
        fast_hits += _writer_line(line) is not None
    # The fast path does serve the writer's plain lines (else this test would prove nothing about it).
    plain = [e.to_json().encode() for e in generate(policy, 50, seed=82)]
    assert all(_writer_line(line) is not None for line in plain)
    assert fast_hits > len(events) // 2


_LINES: list[bytes] = []


def _lines() -> list[bytes]:
    if not _LINES:
        from enforcer.policy import load_policy
        from tests.conftest import BLOCKLISTS

        _LINES.extend(e.to_json().encode() for e in generate(load_policy([BLOCKLISTS]), 20, seed=83))
    return _LINES


@settings(max_examples=400, deadline=None)
@given(
    st.integers(0, 19),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 2), st.binary(min_size=0, max_size=3)), max_size=4),
)
def test_fast_path_equals_the_json_parse_on_edited_lines(index: int, edits: list[tuple[int, int, bytes]]) -> None:
    line = bytearray(_lines()[index])
    for pos, kind, data in edits:
        pos %= len(line) + 1
        if kind == 0:
            line[pos:pos] = data  # insert
        elif kind == 1:
            del line[pos : pos + len(data) + 1]  # delete
        else:
            line[pos : pos + len(data)] = data  # overwrite
    raw = bytes(line)
    assert parse_event_line(raw) == _parse(raw, False, False)
    assert parse_event_line(raw, True) == _parse(raw, True, False)


@pytest.mark.parametrize("read_bytes", [1, 2, 7, 16, 64])
def test_line_blocks_with_reads_shorter_than_lines(tmp_path, monkeypatch: pytest.MonkeyPatch, read_bytes: int) -> None:
    """Blocks of whole lines whatever the read size: a line cut by a read is read again with the next block, a line
    longer than a read is put together, one over MAX_LINE_BYTES that no read ends is one None; every range cut gives
    the same lines."""
    import enforcer.analyst.lines as lines_mod

    monkeypatch.setattr(lines_mod, "READ_BYTES", read_bytes)
    monkeypatch.setattr(lines_mod, "MAX_LINE_BYTES", 40)
    rnd = random.Random(read_bytes)
    lines = [bytes([97 + i % 26]) * rnd.choice([0, 1, 3, 9, 20, 39, 40, 41, 90]) for i in range(60)]
    data = b"\n".join(lines) + b"\nlast"
    path = tmp_path / "f"
    path.write_bytes(data)
    expected = [line + b"\n" for line in lines] + [b"last"]
    with path.open("rb") as fh:
        blocks = list(line_blocks(fh))
    got: list[bytes | None] = []
    for block in blocks:
        if block is None:
            got.append(None)
            continue
        assert block.endswith(b"\n") or block is blocks[-1]
        got.extend(part + b"\n" for part in block.split(b"\n")[:-1])
        if not block.endswith(b"\n"):
            got.append(block.rsplit(b"\n", 1)[-1])
    # A line over the limit is None when no read held its end, else it stays in its block (the line rule measures it).
    assert len(got) == len(expected)
    assert all(g == e or (g is None and len(e) > 41) for g, e in zip(got, expected, strict=True))
    assert None in got or read_bytes > 40
    for cut in range(0, len(data) + 1, 5):
        with path.open("rb") as fh:
            first = [b for b in line_blocks(fh, 0, cut)]
        with path.open("rb") as fh:
            second = [b for b in line_blocks(fh, cut, None)]
        assert b"".join(b for b in first + second if b) == b"".join(g for g in got if g), cut
        assert sum(b is None for b in first + second) == got.count(None), cut


def test_line_blocks_cut_ranges_exactly(tmp_path) -> None:
    """Every line is yielded by exactly one range, whatever the cut points (also inside a line)."""
    lines = [b"x" * n for n in (0, 1, 5, 40, 3, 0, 17)]
    data = b"\n".join(lines) + b"\nlast"
    path = tmp_path / "f"
    path.write_bytes(data)
    for cut in range(len(data) + 1):
        with path.open("rb") as fh:
            first = b"".join(b for b in line_blocks(fh, 0, cut) if b)
        with path.open("rb") as fh:
            second = b"".join(b for b in line_blocks(fh, cut, None) if b)
        assert first + second == data, cut


def _line_rule_chunk(monkeypatch: pytest.MonkeyPatch, body: bytes, enforcement: Any) -> Any:
    """``parse_chunk`` by its definition: every line through the JSON parse (``_parse(..., fast=False)``)."""
    import enforcer.analyst.ingest as ingest_mod

    with monkeypatch.context() as m:
        m.setattr(ingest_mod, "writer_rows", lambda block, minutes: None)
        m.setattr(ingest_mod, "parse_event_line", lambda raw, final=False: _parse(raw, final, False))
        return ingest_mod.parse_chunk(body, "f", 0, enforcement)


def _odd_lines() -> list[bytes]:
    """Lines the block path must hand to the line rule: not the writer's, or the writer's with a time that is not
    one (each still matches the writer pattern but for its time)."""
    base = _lines()[0].decode()
    stamp = base[15:42]
    return [
        b"",
        b"not json",
        base.replace('"kind":', '"extra":1,"kind":', 1).encode(),
        base.replace(stamp, "2023-13-01T00:00:00.000000Z", 1).encode(),  # no month 13
        base.replace(stamp, "2023-10-30T12:00:60.000000Z", 1).encode(),  # second 60
        base.replace(stamp, "1969-12-31T23:59:59.000000Z", 1).encode(),  # before MIN_TS
        base.encode()[:100] + _lines()[1],  # torn, then a whole event
        base.encode().replace(b"kaspersky", b"kasp\xffrsky"),  # not UTF-8
        b"  " + base.encode() + b"\r",
    ]


def test_block_path_equals_the_line_rule(monkeypatch: pytest.MonkeyPatch, policy) -> None:
    """``ingest.parse_chunk`` reads a block of writer lines by one search (``lines.writer_rows``): its rows, skips,
    line count and rollups equal the line rule's on the nasty variants (an empty DNS name beside a URL domain among
    them), alone and with every kind of line the block path refuses, in blocks of a few lines each."""
    import enforcer.analyst.ingest as ingest_mod
    from enforcer.analyst.report import enforcement_of

    events = _variants(generate(policy, 40, seed=84))
    both = HitEvent(**{f: getattr(events[0], f) for f in HitEvent.__dataclass_fields__})
    both.dns_question_name, both.url_domain, both.url_full = "", "url.example", "https://url.example/x"
    lines = [e.to_json().encode() for e in [*events, both]]
    assert b'"name":""' in lines[-1] and b'"domain":"url.example"' in lines[-1]
    table = enforcement_of(policy)
    monkeypatch.setattr(ingest_mod, "BLOCK_BYTES", 3000)
    calls: list[bool] = []
    real = ingest_mod.writer_rows
    monkeypatch.setattr(ingest_mod, "writer_rows", lambda b, m: calls.append(real(b, m) is not None) or real(b, m))
    odd = _odd_lines()
    # Each odd line among plain writer lines, more than a block apart: the blocks around it take the block path.
    mixed = [e.to_json().encode() for e in generate(policy, 12 * len(odd), seed=85)]
    for i, line in enumerate(odd):
        mixed.insert(i * 13, line)
    for body in (
        b"\n".join(lines) + b"\n",
        b"\n".join(mixed) + b"\n",
        b"\n".join(mixed) + b"\n" + odd[6],  # a rotated file's torn last line
        b"\n".join(lines),
    ):
        calls.clear()
        got = ingest_mod.parse_chunk(body, "f", 0, table)
        want = _line_rule_chunk(monkeypatch, body, table)
        assert got == want
        assert True in calls  # the block path did serve blocks here
        assert got[2] == want[2] > 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 19), min_size=1, max_size=12),
    st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 2), st.binary(min_size=0, max_size=3)), max_size=3),
)
def test_block_path_equals_the_line_rule_on_edited_blocks(
    picks: list[int], edits: list[tuple[int, int, bytes]]
) -> None:
    """Random edits anywhere in a block of writer lines (a newline removed or added, a quote, a byte that is not
    UTF-8): the block path gives what the line rule gives."""
    import enforcer.analyst.ingest as ingest_mod

    body = bytearray(b"".join(_lines()[i] + b"\n" for i in picks))
    for pos, kind, data in edits:
        pos %= len(body) + 1
        if kind == 0:
            body[pos:pos] = data
        elif kind == 1:
            del body[pos : pos + len(data) + 1]
        else:
            body[pos : pos + len(data)] = data
    with pytest.MonkeyPatch.context() as mp:
        assert ingest_mod.parse_chunk(bytes(body), "f", 0) == _line_rule_chunk(mp, bytes(body), None)


def test_a_nested_value_is_no_field_value() -> None:
    """``"ip": [["10.9.0.6"]]`` named the client by its Python repr (``['10.9.0.6']``); it names none now, for the
    report and the ingest alike (one line rule)."""
    base = (
        '{"@timestamp":"2024-03-01T00:00:00.000000Z","event":{"id":"00000000000000000000000000000001",'
        '"type":["denied"],"action":"dns-block"},"rule":{"id":"wechat:domain:x","ruleset":"wechat"},'
        '"observer":{"type":"dns"},"source":{"ip":IP}}'
    )
    for ip, client in (('"10.9.0.6"', "10.9.0.6"), ('["10.9.0.6"]', "10.9.0.6"), ('[["10.9.0.6"]]', ""), ("{}", "")):
        parsed, reason = parse_event_line(base.replace("IP", ip).encode())
        assert reason is None and parsed is not None and parsed.record.client == client, ip
