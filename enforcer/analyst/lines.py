"""The one reader of event files and event lines, shared by ``enforcer report`` (report.py) and the analyst's ingest
(ingest.py), so that both count exactly the same events.

- ``open_event_file(path, max_bytes)``: only regular files, opened with ``O_NONBLOCK`` (opening a FIFO cannot hang),
  at most ``max_bytes`` long; ``EventFileError`` (``reason`` ``not_regular`` / ``too_large`` / ``unreadable``, and a
  one-line message) otherwise (``--max-file-size`` is read by ``enforcer.config.parse_size``).
- ``line_blocks(fh, start, end)``: the whole lines that start in ``[start, end)`` as blocks of bytes, in bounded
  memory: a line longer than ``MAX_LINE_BYTES`` is skipped without being held (``None`` stands for it), and the start
  of a range inside a line is found without reading that line into memory. ``skip_line`` moves past one line.
- ``parse_event_line(raw)``: THE rule for one line (docs/operators.md, section 9.4): ``(Parsed, None)`` for an event,
  ``(Parsed, "torn")`` for an event recovered from the tail of a torn line, ``(None, reason)`` for a skipped line
  (``invalid_json``, ``not_event``, ``oversize``), ``(None, None)`` for a blank line (not a line of the log).
- ``writer_rows(block, minutes)``: the same rule for a block of the writer's own lines at once (the ingest's parser):
  each line's fields from one search of the block, or None when any line of it is not the writer's (then the line
  rule, line by line). ``minute_us``: a writer time's minute in microseconds, remembered (the report's block path
  and this one).
- ``Parsed``: the indexed fields (``records.Record``), the time in microseconds, the dedupe identity ``key`` (the
  store's UNIQUE ``(ts, eid)``) and the bytes to store; ``fingerprint(ts_us, key)`` is its 64-bit digest, which the
  report keeps in memory to count each event once, as the store does (``id_fingerprint(ts_us, eid)`` the same for a
  writer id given as its hex digits, as the report reads it from a block).

Kept apart from the callers' loops so that later fields (e.g. DHCP identities) are added in one place: extend
``records.Record`` / ``record_from_doc`` and both the report and the store see them.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from .records import EVENT_HEAD, MIN_TS, Record, record_from_doc, recover, ts_to_us

# Far above any line the writer produces (a URL-heavy proxy event is a few KB), far below what would hurt memory.
MAX_LINE_BYTES = 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 4 * 1024**3
READ_BYTES = 1024 * 1024
SKIP_REASONS = ("invalid_json", "not_event", "oversize", "torn")
_HEX = re.compile(r"[0-9a-f]{32}")
_EVENT_HEAD = EVENT_HEAD.encode("ascii")


# The garbage-collector thresholds of a process that reads events in bulk (``tune_gc``): the analyst's ingest
# allocates every row it stores as a tuple (unpickled from the parser process), ~30,000 a chunk, and a report worker
# gets one from ``findall`` per line (1,800 a block), all freed by reference counting; with Python's default (700,
# 10, 10) they set off a young collection every 700 and a full one, over every live object, every few chunks: 1.05 us
# of the ingest writer's 13.7 an event (48 full collections of ~28 ms for 2M events), against 0.39 us with these
# (docs/scale.md, "Ingest, sixth round"); 6 % of a report worker's instructions (bench/report_callgrind.py). The
# resolver's values (enforcer/dns/process.py); cycles are still collected.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Set ``GC_THRESHOLDS`` for the whole process: called by the owner of a process that reads events in bulk
    (``enforcer analyst``, ``enforcer report`` and its workers, and the ingest benchmark as the analyst runs it)."""
    gc.set_threshold(*GC_THRESHOLDS)


class EventFileError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


# First bytes of the compressed formats logrotate and friends write (gzip, bzip2, xz, zstd)
_COMPRESSED = (
    (b"\x1f\x8b", "gzip", "zcat"),
    (b"BZh", "bzip2", "bzcat"),
    (b"\xfd7zXZ", "xz", "xzcat"),
    (b"\x28\xb5\x2f\xfd", "zstd", "zstdcat"),
)


def open_event_file(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> BinaryIO:
    """Open an event file for reading, refusing anything but a regular file of at most ``max_bytes``.

    ``O_NONBLOCK``: opening a FIFO for reading would otherwise wait for a writer forever. The type is checked on the
    opened descriptor (``fstat``), so a name swapped for a FIFO or a device between listing and opening is caught.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError:
        raise EventFileError("not_regular", f"{path}: is a directory, not an event file") from None
    except OSError as exc:
        raise EventFileError("unreadable", f"{path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise EventFileError("not_regular", f"{path}: {_kind(st.st_mode)}, not a regular file; not read")
        if st.st_size > max_bytes:
            raise EventFileError(
                "too_large", f"{path}: {st.st_size} bytes, over --max-file-size ({max_bytes} bytes); not read"
            )
        head = os.pread(fd, 6, 0)
        for magic, kind, tool in _COMPRESSED:
            if head.startswith(magic):  # a rotated file compressed by logrotate, named like the JSON Lines it was
                raise EventFileError("compressed", f"{path}: {kind}-compressed, not JSON Lines; not read ({tool} it)")
        return os.fdopen(fd, "rb")  # buffered: read(n) returns n bytes unless the file ends
    except BaseException:
        os.close(fd)
        raise


def skip_line(fh: BinaryIO, pos: int) -> int | None:
    """From ``pos`` (inside a line), the offset just after that line's newline; None when the file ends first."""
    fh.seek(pos)
    while True:
        data = fh.read(READ_BYTES)
        if not data:
            return None
        i = data.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(data)


def line_blocks(fh: BinaryIO, start: int = 0, end: int | None = None) -> Iterator[bytes | None]:
    """Blocks of whole lines (each ending in a newline, except a last line that lacks one) that start in
    ``[start, end)``; ``None`` for a line over ``MAX_LINE_BYTES`` that was skipped unread.

    Memory stays below ``MAX_LINE_BYTES + READ_BYTES`` whatever the file holds (``/dev/zero``-like content, one
    gigabyte line). A block may still hold a line somewhat over the limit: ``parse_event_line`` measures every line.
    """
    pos = start
    if start > 0:
        fh.seek(start - 1)
        if fh.read(1) != b"\n":
            nxt = skip_line(fh, start)  # the line in progress belongs to the previous range
            if nxt is None:
                return
            pos = nxt
    fh.seek(pos)
    rest = b""
    while end is None or pos < end:
        data = fh.read(READ_BYTES)
        if not data:
            if rest:
                yield None if len(rest) > MAX_LINE_BYTES else rest
            return
        buf = rest + data if rest else data
        cut = buf.rfind(b"\n")
        if cut < 0:
            if len(buf) > MAX_LINE_BYTES:
                yield None
                nxt = skip_line(fh, pos + len(buf))
                if nxt is None:
                    return
                pos, rest = nxt, b""
                fh.seek(pos)
            else:
                rest = buf
            continue
        whole, rest = buf[: cut + 1], b""
        if end is not None and pos + len(whole) > end:
            # Only the lines starting before ``end``: up to the newline that ends the line holding byte end-1.
            k = whole.find(b"\n", max(0, end - pos - 1))
            yield whole[: k + 1]
            return
        yield whole
        pos += len(whole)
        if len(whole) < len(buf):
            # The line cut by the read is read again with the next block rather than copied in front of it: a
            # megabyte copied less a block (the page cache serves the few hundred bytes twice).
            fh.seek(pos)


@dataclass(slots=True)  # not frozen: built once per line, and frozen init costs a setattr per field
class Parsed:
    record: Record
    ts_us: int
    key: str | bytes  # the event id (16 bytes for the writer's uuid4 hex), else sha1 of the stored line
    doc: bytes  # the line as stored (flat dotted keys re-nested)


def _nest(doc: dict[str, Any]) -> dict[str, Any]:
    """Flat dotted keys ("event.action": ...) -> nested ECS objects, so the API always returns one shape."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if "." in key and key != "@timestamp":
            parts = key.split(".")
            cur = out
            for p in parts[:-1]:
                nxt = cur.get(p)
                if not isinstance(nxt, dict):
                    nxt = cur[p] = {}
                cur = nxt
            cur.setdefault(parts[-1], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**value, **out[key]}
        else:
            out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: valid JSON that Python reads as inf
        raise ValueError(f"{text[:40]} is out of range")
    return value


# RFC 8259 JSON only: Python's json takes NaN and Infinity (and reads 1e999 as inf), which the API would then write
# back out as JSON no other reader accepts.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite)


def _loads(data: bytes | str) -> Any:
    """The JSON text ``data`` (bytes: strict UTF-8) or ``_INVALID``: not JSON, NaN or Infinity, or a string with a
    lone surrogate escape (``"\\udc80"``), which no UTF-8 text can hold: the store (SQLite) refuses such a string,
    and one such line stopped the analyst's ingest for good."""
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data  # a leading BOM, as json.loads
        doc = _DECODER.decode(text)
        if "\\u" in text and _lone_surrogate(doc):
            return _INVALID
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError; deep nesting is a RecursionError
        return _INVALID
    return doc


def _lone_surrogate(value: Any) -> bool:
    if type(value) is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if type(value) is dict:
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if type(value) is list:
        return any(map(_lone_surrogate, value))
    return False


_INVALID = object()


def _flat(doc: dict[str, Any]) -> bool:
    return "event" not in doc and any("." in k for k in doc if k != "@timestamp")


def _finish(rec: Record, doc: dict[str, Any], stored: bytes) -> Parsed | None:
    try:
        ts_us = ts_to_us(rec.ts)
    except (ValueError, OverflowError):
        return None
    if _flat(doc):
        stored = json.dumps(_nest(doc), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    eid = rec.id
    key: str | bytes = (
        bytes.fromhex(eid)
        if len(eid) == 32 and _HEX.fullmatch(eid)
        else (eid or "sha1:" + hashlib.sha1(stored).hexdigest())
    )
    return Parsed(rec, ts_us, key, stored)


def _event(text: bytes | str) -> Parsed | None:
    doc = _loads(text)
    if type(doc) is not dict:
        return None
    rec = record_from_doc(doc)
    if rec is None:
        return None
    return _finish(rec, doc, text if isinstance(text, bytes) else text.encode("utf-8"))


# The writer's own line (events.HitEvent.to_ecs, json.dumps with compact separators), matched whole: a line that
# matches is valid JSON with exactly these keys in this order, so the fields read from the groups are the values a
# JSON parse would give, provided no string holds an escape (``_S``/``_c`` refuse backslashes and control characters)
# and the line is valid UTF-8. Anything else (another key order, another field, an escape) takes the JSON parse:
# this only saves time (a third of the parse's cost), the rule stays that of ``record_from_doc``.
_S = rb'"[^"\\\x00-\x1f]*"'
_N = rb"(?:0|[1-9][0-9]{0,18})"


def _c(name: str) -> bytes:
    """A captured string value, as the group ``name``."""
    return rb'"(?P<' + name.encode("ascii") + rb'>[^"\\\x00-\x1f]*)"'


_WRITER_SOURCE = (
    rb'\{"@timestamp":"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)"'
    rb',"event":\{"id":"(?P<eid>[0-9a-f]{32})","kind":' + _S + rb',"category":\[(?:' + _S + rb"(?:," + _S + rb")*)?\]"
    rb',"type":\["(?P<type>denied|allowed)"\],"action":'
    + _c("action")
    + rb',"dataset":'
    + _S
    + rb',"module":'
    + _S
    + rb"\}"
    rb',"rule":\{"id":'
    + _c("rule")
    + rb',"ruleset":"(?P<app>[^"\\\x00-\x1f]+)","reference":'
    + _S
    + rb',"version":'
    + _S
    + rb'(?:,"category":'
    + _c("category")
    + rb")?\}"
    rb',"observer":\{"hostname":' + _S + rb',"type":' + _c("component") + rb"\}"
    # labels: exempt and/or the resolver's dns_transport (a line with device.id takes the full parse)
    rb'(?:,"labels":\{(?:"exempt":true|"dns_transport":"[a-z]{2,4}"|"exempt":true,"dns_transport":"[a-z]{2,4}")\})?'
    rb'(?:,"source":\{"ip":' + _c("client") + rb'(?:,"port":' + _N + rb")?\})?"
    rb'(?:,"dns":\{"question":\{"name":' + _c("dns_name") + rb'(?:,"type":' + _S + rb")?\}\})?"
    rb'(?:,"url":\{(?:"full":' + _S + rb'(?:,"domain":' + _c("domain1") + rb')?|"domain":' + _c("domain2") + rb")\})?"
    rb'(?:,"http":\{"request":\{"method":' + _S + rb"\}\})?"
    rb'(?:,"tls":\{"client":\{"server_name":' + _c("sni") + rb"\}\})?"
    rb'(?:,"destination":\{(?:"ip":' + _c("dest_ip") + rb'(?:,"port":' + _N + rb')?|"port":' + _N + rb")\})?"
    rb"\}"
).decode("ascii")
_WRITER_LINE = re.compile(_WRITER_SOURCE, re.ASCII)  # on text, so that \d is 0-9 only
# The same lines, found in a block of text (one match per whole line: no part of the pattern matches a newline),
# capturing only what the report counts (``report.scan_range``): the other groups made non-capturing, so that a
# match creates seven strings instead of fourteen, and the time as its minute, seconds and microseconds (the report
# converts the minute once and never needs the whole text). The same pattern otherwise: a line is a writer line for
# both.
REPORT_FIELDS = ("minute", "sec", "usec", "eid", "type", "app", "client")
_REPORT_TS = r"(?P<minute>\d{4}-\d\d-\d\dT\d\d:\d\d):(?P<sec>\d\d)\.(?P<usec>\d{6})Z"
# The writer pattern with its time as minute, seconds and microseconds: the block patterns' source (``WRITER_LINES``
# for the report, ``WRITER_ROWS`` for the ingest).
_TIMED_SOURCE = _WRITER_SOURCE.replace(r"(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)", _REPORT_TS, 1)
assert _TIMED_SOURCE != _WRITER_SOURCE
WRITER_LINES = re.compile(
    "^" + re.sub(r"\(\?P<(?!(?:" + "|".join(REPORT_FIELDS) + r")>)\w+>", "(?:", _TIMED_SOURCE) + "$",
    re.ASCII | re.MULTILINE,
)
assert WRITER_LINES.groupindex.keys() == set(REPORT_FIELDS)
# The same lines in a block with no backslash and no control character but its newlines (``clean_block``): there
# no string can hold what ``_S`` refuses, so a string's content is ``[^"]*``, which the regular-expression engine
# steps over in one tight loop where a character class costs a call per character: 1.6 against 2.3 us a line of
# the writer's (8 MB of them, one process), the check of the block 0.36 us a line. A match of this one may run over
# a newline, but only through a line that no match holds whole, so ``report._Counter.block``'s count (as many matches
# as lines) still says that every line is the writer's, matched whole; any other block takes ``WRITER_LINES``.
_STRING_CLASS = r'[^"\\\x00-\x1f]'


def _clean(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """The variant of a block pattern for a clean block (``clean_block``): ``[^"]`` for a string's characters."""
    return re.compile(pattern.pattern.replace(_STRING_CLASS, '[^"]'), re.ASCII | re.MULTILINE)


WRITER_LINES_CLEAN = _clean(WRITER_LINES)
assert WRITER_LINES_CLEAN.pattern.count('[^"]') == WRITER_LINES.pattern.count(_STRING_CLASS) > 20
# One byte each: ``in`` looks for a single byte with memchr, and 32 such searches cost less than one ``translate``
# that deletes them (0.48 against 0.68 ms a megabyte; 2,300 against 6,900 instructions a line).
NOT_CLEAN = tuple(bytes([c]) for c in [*range(0x20), 0x5C] if c != 0x0A)


def clean_block(block: bytes) -> bool:
    """Whether ``block`` holds no backslash and no control character but newlines (``WRITER_LINES_CLEAN``)."""
    return not any(map(block.__contains__, NOT_CLEAN))


# Every field the ingest stores of a writer line, for a block of whole lines (``writer_rows``): ``WRITER_LINES`` with
# all of ``_WRITER_LINE``'s groups, and the DNS name captured with its quotes, because ``findall`` gives "" for a
# group that took no part, and the rule below tells an empty DNS name (the name, even empty) from none.
_ROWS_SOURCE = _TIMED_SOURCE.replace(f'"(?P<dns_name>{_STRING_CLASS}*)"', f'(?P<dns_name>"{_STRING_CLASS}*")', 1)
WRITER_ROWS = re.compile("^" + _ROWS_SOURCE + "$", re.ASCII | re.MULTILINE)
WRITER_ROWS_CLEAN = _clean(WRITER_ROWS)
assert WRITER_ROWS.groups == _WRITER_LINE.groups + 2 and '(?P<dns_name>"' in WRITER_ROWS.pattern
MINUTES_MAX = 100_000  # minutes (69 days) of times kept converted (``minute_us``)
INVALID_MINUTE = -1


def minute_us(minutes: dict[str, int], minute: str) -> int:
    """``records.ts_to_us`` of the start of ``minute`` (``YYYY-MM-DDTHH:MM``), remembered in ``minutes`` (cleared
    when it holds ``MINUTES_MAX``); ``INVALID_MINUTE`` when it is not a time at or after ``MIN_TS``. A writer line's
    time is its minute's plus ``int(seconds + microseconds)``, valid below 60,000,000: one dict lookup an event
    instead of a datetime parse (the report's and the ingest's block paths)."""
    try:
        us = ts_to_us(minute + ":00.000000Z") if minute >= MIN_TS[:16] else INVALID_MINUTE
    except ValueError:
        us = INVALID_MINUTE
    if len(minutes) >= MINUTES_MAX:
        minutes.clear()
    minutes[minute] = us
    return us


# One writer line as ``writer_rows`` reads it: (the line's bytes, time in microseconds, event id (32 hex digits),
# denied, action, rule id, app, category, component, client, name): ``Record``'s fields without a Record, the device
# id, user and kind being "" on every writer line.
WriterRow = tuple[bytes, int, str, bool, str, str, str, str, str, str, str]


def writer_rows(block: bytes, minutes: dict[str, int]) -> list[WriterRow | bytes] | None:
    """Each line of ``block`` (whole lines, the last one maybe unterminated) as ``parse_event_line`` reads it, in
    order, when every line is the writer's (else None: the caller takes ``parse_event_line`` line by line); a line
    whose time is not one is in the list as its bytes, for the line rule to judge.

    One regular-expression search over the decoded block instead of a match, a Record and a Parsed a line (the
    ingest's parser, docs/scale.md "Ingest, ninth round"). As many matches as lines means one match a line, whole
    (``report._Counter.block`` relies on the same), so the i-th match is the i-th line."""
    try:
        text = block.decode("utf-8")  # strict: a block that is not valid UTF-8 takes the line rule
    except UnicodeDecodeError:
        return None
    found = (WRITER_ROWS_CLEAN if clean_block(block) else WRITER_ROWS).findall(text)
    raws = block.split(b"\n")
    if not raws[-1]:
        raws.pop()
    if len(found) != len(raws) or max(map(len, raws), default=0) > MAX_LINE_BYTES:
        return None
    out: list[WriterRow | bytes] = []
    add, mget = out.append, minutes.get
    for raw, fields in zip(raws, found, strict=True):
        minute, ss, us, eid, typ, action, rule_id, app, category, component, client, dns, dom1, dom2, sni, dest = fields
        base = mget(minute)
        if base is None:
            base = minute_us(minutes, minute)
        sec = int(ss + us)
        if base == INVALID_MINUTE or sec >= 60_000_000:
            add(raw)
            continue
        # _writer_line's rule: the DNS name (even empty), else a non-empty URL domain, else a non-empty SNI, else
        # the destination address ("" for a group that took no part, as None there).
        name = dns[1:-1] if dns else (dom1 or dom2 or sni or dest)
        add((raw, base + sec, eid, typ == "denied", action, rule_id, app, category, component, client, name))
    return out


def _writer_line(raw: bytes) -> Parsed | None:
    """The writer's own line without a JSON parse (see ``_WRITER_LINE``); None: take the full parse."""
    try:
        text = raw.decode("utf-8")  # strict, as json.loads on bytes: invalid UTF-8 takes the full parse
    except UnicodeDecodeError:
        return None
    m = _WRITER_LINE.fullmatch(text)
    if m is None:
        return None
    ts, eid, kind, action, rule_id, app, category, component, client, dns_name, domain1, domain2, sni, dest_ip = (
        m.groups()
    )
    if ts < MIN_TS:
        return None
    try:
        ts_us = ts_to_us(ts)
    except ValueError:
        return None
    # records._record_nested: the DNS name (even empty), else a non-empty URL domain, else a non-empty SNI, else the
    # destination address.
    domain = domain1 if domain1 is not None else domain2
    if dns_name is not None:
        name = dns_name
    elif domain:
        name = domain
    elif sni:
        name = sni
    else:
        name = dest_ip or ""
    rec = Record(
        eid,
        ts,
        app,
        client if client is not None else "",
        category if category is not None else "",
        component,
        action,
        rule_id,
        kind == "denied",
        name,
    )
    return Parsed(rec, ts_us, bytes.fromhex(eid), raw)


def parse_event_line(raw: bytes, final: bool = False) -> tuple[Parsed | None, str | None]:
    """One line (without its newline) -> (event, None) | (event, "torn") | (None, reason) | (None, None) if blank.

    ``final``: the unterminated last line of a file that will not grow (a rotated file, or any file the report
    reads): when it is not JSON it is a write cut short, ``torn``.
    """
    return _parse(raw, final, True)


def _parse(raw: bytes, final: bool, fast: bool) -> tuple[Parsed | None, str | None]:
    """``parse_event_line``; ``fast`` False: always the JSON parse (the definition the fast path must equal)."""
    if len(raw) > MAX_LINE_BYTES:
        return None, "oversize"
    if raw[:1] != b"{" or raw[-1:] != b"}":
        raw = raw.strip()
        if not raw:
            return None, None
    if fast and raw.startswith(_EVENT_HEAD):
        quick = _writer_line(raw)
        if quick is not None:
            return quick, None
    doc = _loads(raw)  # bytes: must be valid UTF-8
    if doc is _INVALID:
        text = raw.decode("utf-8", "replace")  # invalid UTF-8 inside strings becomes U+FFFD, as for any reader
        doc = _loads(text)
        data = text.encode("utf-8")
    else:
        data = raw
    if type(doc) is dict:
        rec = record_from_doc(doc)
        if rec is not None:
            parsed = _finish(rec, doc, data)
            return (parsed, None) if parsed is not None else (None, "not_event")
    # A crash mid-write followed by a fresh append: the line often ends with one whole event.
    tail = recover(data.decode("utf-8", "replace"))
    if tail:
        recovered = _event(tail)
        if recovered is not None:
            return recovered, "torn"
    return None, (("torn" if final else "invalid_json") if doc is _INVALID else "not_event")


def fingerprint(ts_us: int, key: str | bytes) -> int:
    """64-bit digest of the store's dedupe identity (time, id): the report's in-memory set holds these, ~70 bytes
    an event instead of the ids themselves (a false match among 10M events: about 3 in a million). The writer's
    id (16 bytes) counts as its 32 lower-case hex digits, as the report reads it from a block (``id_fingerprint``).

    Python's own hash (SipHash of the id, folded with the time): the one digest computed in C, a tenth of what a
    fold of the id as a 128-bit integer cost an event. It depends on the process's hash seed: ``enforcer report``
    starts its workers with one seed, so that their fingerprints compare."""
    return hash((ts_us, key.hex() if isinstance(key, bytes) else key))


def id_fingerprint(ts_us: int, eid: str) -> int:
    """``fingerprint`` of a writer's event: its id as the 32 lower-case hex digits of the line."""
    return hash((ts_us, eid))
