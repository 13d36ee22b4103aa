"""RPZ hits logged by BIND and Unbound, turned into enforcer HitEvents (``event.dataset`` ``enforcer.rpz``).

A fleet of BIND/Unbound resolvers fed by the RPZ feed enforces the policy but writes its hits to its own logs. This
module reads those lines so that ``enforcer report`` and the analyst see the whole fleet:

- Unbound (``rpz-log: yes``): ``[1795899598] unbound[15964:0] info: rpz: applied [enforcer] *.kaspersky.com.
  rpz-nxdomain 10.0.0.7@55218 box.kaspersky.com. A IN`` (also with ``log-time-ascii`` or syslog prefixes);
- BIND (``category rpz``): ``28-Nov-2026 20:57:35.419 client @0x7f59f0edbc98 10.0.0.7#51335 (box.kaspersky.com):
  rpz QNAME NXDOMAIN rewrite box.kaspersky.com/A/IN via box.kaspersky.com.rpz.enforcer`` (or syslog-prefixed).

The rule, app and category come from the current policy (``match_name`` of the query name, or of the address for
response-IP triggers); a hit the policy no longer explains is skipped and counted. ``PASSTHRU`` hits (monitor mode)
become ``event.type: ["allowed"]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import BinaryIO
from zoneinfo import ZoneInfo

from ..events import EventWriter, HitEvent, install_reopen_signal
from ..policy.matcher import Policy

MAX_LINE_BYTES = 16 * 1024  # BIND and Unbound hit lines are under 1 KB; a longer line is not one
READ_BYTES = 64 * 1024
FOLLOW_POLL = 0.5  # seconds between looks at a followed log that has nothing new

UNBOUND_RE = re.compile(
    r"rpz: applied (?:\[(?P<logname>[^\]]{0,255})\] )?(?:(?P<trigger>client-ip|nsip|nsdname|response-ip|qname) )?"
    r"(?P<via>\S+) (?P<action>\S+) (?P<ip>[0-9A-Fa-f:.]+)@(?P<port>\d+) (?P<qname>\S+) (?P<qtype>\S+) (?P<qclass>\S+)"
)
UNBOUND_EPOCH_RE = re.compile(r"^\[(?P<epoch>\d+)\]")
BIND_RE = re.compile(
    r"client (?:@0x[0-9a-f]+ )?(?P<ip>[0-9A-Fa-f:.]+)#(?P<port>\d+) \((?P<qname>[^)]{0,1100})\): (?:view \S+: )?"
    r"rpz (?P<trigger>QNAME|IP|NSIP|NSDNAME|CLIENT-IP) (?P<action>\S+) rewrite "
    r"(?P<name>[^/]+)/(?P<qtype>[^/]+)/(?P<qclass>\S+) via (?P<via>\S+)"
)
BIND_TIME_RE = re.compile(r"^(?P<ts>\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}:\d{2}(?:\.\d+)?)")
SYSLOG_TIME_RE = re.compile(r"^(?P<ts>[A-Z][a-z]{2} [ \d]\d \d{2}:\d{2}:\d{2}) (?P<host>\S+) ")
ISO_TIME_RE = re.compile(
    r"^(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?) (?P<host>\S+) "
)
ENGINES = ("unbound", "bind")


@dataclass(frozen=True, slots=True)
class RpzHit:
    timestamp: datetime
    client_ip: str
    client_port: int
    qname: str
    qtype: str
    trigger: str  # qname | response-ip | client-ip | nsip | nsdname
    action: str  # as the engine wrote it, lower case (nxdomain, passthru, local-data, ...)
    via: str
    observer: str | None


def _timestamp(line: str, tz: tzinfo) -> tuple[datetime | None, str | None]:
    m = UNBOUND_EPOCH_RE.match(line)
    if m:
        return datetime.fromtimestamp(int(m["epoch"]), UTC), None
    m = BIND_TIME_RE.match(line)
    if m:
        fmt = "%d-%b-%Y %H:%M:%S.%f" if "." in m["ts"] else "%d-%b-%Y %H:%M:%S"
        return datetime.strptime(m["ts"], fmt).replace(tzinfo=tz), None
    m = ISO_TIME_RE.match(line)
    if m:
        ts = datetime.fromisoformat(m["ts"].replace("Z", "+00:00"))
        return (ts if ts.tzinfo else ts.replace(tzinfo=tz)), m["host"]
    m = SYSLOG_TIME_RE.match(line)
    if m:
        now = datetime.now(tz)
        ts = datetime.strptime(f"{now.year} {m['ts']}", "%Y %b %d %H:%M:%S").replace(tzinfo=tz)
        if ts > now:  # a December line read in January
            ts = ts.replace(year=now.year - 1)
        return ts, m["host"]
    return None, None


def parse_line(line: str, engine: str, tz: tzinfo = UTC) -> RpzHit | None:
    """One log line -> RpzHit, or None when the line is not an RPZ hit."""
    if engine == "unbound":
        m = UNBOUND_RE.search(line)
        if m is None:
            return None
        trigger = m["trigger"] or "qname"
        action = m["action"].lower().removeprefix("rpz-")
        qname, qtype, via = m["qname"], m["qtype"], m["via"]
    elif engine == "bind":
        m = BIND_RE.search(line)
        if m is None:
            return None
        trigger = {"QNAME": "qname", "IP": "response-ip", "CLIENT-IP": "client-ip"}.get(
            m["trigger"], m["trigger"].lower()
        )
        action = m["action"].lower()
        qname, qtype, via = m["name"], m["qtype"], m["via"]
    else:
        raise ValueError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
    ts, host = _timestamp(line, tz)
    return RpzHit(
        ts or datetime.now(UTC), m["ip"], int(m["port"]), qname.rstrip(".").lower(), qtype, trigger, action, via, host
    )


def hit_to_event(hit: RpzHit, policy: Policy, observer: str | None = None) -> HitEvent | None:
    """The HitEvent for a hit, attributed by the current policy; None when the policy has no rule for it."""
    match = None
    if hit.trigger == "response-ip":
        addr = _rpz_ip_address(hit.via)
        match = policy.match_ip(addr) if addr is not None else None
    if match is None:
        match = policy.match_name(hit.qname)
    if match is None or not match.blocked:
        return None
    enforced = hit.action != "passthru"
    return HitEvent.from_match(
        match,
        action="dns-response-block" if hit.trigger == "response-ip" else "dns-block",
        component="dns",
        version=policy.fingerprint,
        enforced=enforced,
        at=hit.timestamp,
        source_ip=hit.client_ip,
        source_port=hit.client_port,
        dns_question_name=hit.qname,
        dns_question_type=hit.qtype,
        observer_hostname=observer or hit.observer or "rpz",
        dataset="enforcer.rpz",
    )


def _rpz_ip_address(via: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``21.0.176.74.77.rpz-ip[.zone]`` -> 77.74.176.0 (the network address of the trigger)."""
    labels = via.rstrip(".").split(".")
    if "rpz-ip" not in labels:
        return None
    parts = labels[1 : labels.index("rpz-ip")]
    try:
        if len(parts) == 4 and all(p.isdigit() for p in parts):
            return ipaddress.IPv4Address(".".join(reversed(parts)))
        groups = list(reversed(parts))
        if "zz" in groups:
            i = groups.index("zz")
            return ipaddress.IPv6Address(":".join(groups[:i]) + "::" + ":".join(groups[i + 1 :]))
        return ipaddress.IPv6Address(":".join(groups))
    except ValueError:
        return None


def convert(
    lines: Iterable[str], engine: str, policy: Policy, tz: tzinfo = UTC, observer: str | None = None
) -> Iterator[HitEvent | None]:
    """HitEvents for the RPZ hits among ``lines``; None for a hit the policy does not explain (counted by callers)."""
    for line in lines:
        hit = parse_line(line, engine, tz)
        if hit is not None:
            yield hit_to_event(hit, policy, observer)


# -- enforcer rpz-log ------------------------------------------------------------------------------------------------


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def add_arguments(command: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("logs", nargs="+", metavar="LOG", help="BIND or Unbound log files ('-' for standard input)")
    p.add_argument("--engine", required=True, choices=ENGINES, help="which software wrote the logs")
    p.add_argument("--events", required=True, metavar="PATH", help="JSON Lines event file to append to")
    p.add_argument("--blocklist", metavar="PATH", help="policy used to attribute hits (default: blocklists/)")
    p.add_argument("--timezone", default="UTC", help="time zone of timestamps without one (BIND, syslog); default UTC")
    p.add_argument("--observer", help="observer.hostname for the events (default: from the log line, else 'rpz')")
    p.add_argument("--follow", action="store_true", help="keep reading appended lines (like tail -f)")


class LineReader:
    """Whole lines of a byte stream, each at most ``MAX_LINE_BYTES``: a longer one is skipped without being held
    (counted in ``oversize``), so one runaway line can neither fill memory nor feed the patterns a megabyte."""

    def __init__(self) -> None:
        self.oversize = 0
        self._buf = b""
        self._skipping = False  # inside a line already over the limit: drop up to its newline

    def feed(self, data: bytes) -> Iterator[str]:
        """The lines ``data`` completes; the unterminated rest waits for the next ``feed`` (a line being written)."""
        buf = self._buf + data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            if self._skipping:
                self._skipping = False
            elif end - start <= MAX_LINE_BYTES:
                yield buf[start:end].decode("utf-8", "replace")
            else:
                self.oversize += 1
            start = end + 1
        rest = buf[start:]
        if len(rest) > MAX_LINE_BYTES:
            if not self._skipping:
                self.oversize += 1
            self._skipping, rest = True, b""
        self._buf = rest

    def drop(self) -> None:
        """Forget the unterminated rest (the file it came from was truncated)."""
        self._buf, self._skipping = b"", False

    def end(self) -> Iterator[str]:
        """The last line of a file that will not grow (read to its end, or rotated away), even without a newline."""
        if self._buf and not self._skipping:
            yield self._buf.decode("utf-8", "replace")
        self._buf, self._skipping = b"", False


def _read(fh: BinaryIO, reader: LineReader) -> Iterator[str]:
    while chunk := fh.read(READ_BYTES):
        yield from reader.feed(chunk)


def _follow(path: Path, reader: LineReader, poll: float = FOLLOW_POLL) -> Iterator[str]:
    """Lines appended to ``path``, like ``tail -F``: a line being written is held until its newline; when the log
    is rotated (renamed and created again by logrotate or rsyslog) the old file is read to its end and the new one
    from its start; a file truncated in place (``copytruncate``) is read again from its start, as ``tail -F`` does
    once it is seen shorter than what was read (lines that regrow it past that within one poll are missed)."""
    fh = path.open("rb")
    try:
        while True:
            data = fh.read(READ_BYTES)
            if data:
                yield from reader.feed(data)
                continue
            try:
                st = path.stat()
            except OSError:
                st = None  # between the rename and the new file: keep the old one until it appears
            ident = os.fstat(fh.fileno())
            if st is not None and (st.st_dev, st.st_ino) != (ident.st_dev, ident.st_ino):
                try:
                    new = path.open("rb")
                except OSError:
                    new = None  # gone again: look at the next poll
                if new is not None:
                    yield from _read(fh, reader)  # what was written before the rename
                    yield from reader.end()
                    fh.close()
                    fh = new
                    continue
            elif st is not None and st.st_size < fh.tell():
                reader.drop()  # the half line before the truncation went with it
                fh.seek(0)
                continue
            time.sleep(poll)
    finally:
        fh.close()


def _lines(paths: list[str], follow: bool, reader: LineReader) -> Iterator[str]:
    for p in paths:
        if p == "-":
            yield from _read(sys.stdin.buffer, reader)
            yield from reader.end()
        elif follow:
            yield from _follow(Path(p), reader)
        else:
            with open(p, "rb") as fh:
                yield from _read(fh, reader)
            yield from reader.end()


def run(command: str, args: argparse.Namespace) -> int:
    from ..config import default_blocklist
    from ..policy import PolicyError, load_policy

    try:
        tz: tzinfo = ZoneInfo(args.timezone)
    except Exception:
        print(f"--timezone: unknown time zone {args.timezone!r}", file=sys.stderr)
        return 1
    try:
        policy = load_policy(args.blocklist or default_blocklist())
    except PolicyError as exc:
        for problem in exc.problems:
            print(str(problem), file=sys.stderr)
        return 1
    for p in args.logs:
        if p != "-" and not Path(p).is_file():
            print(f"{p}: no such file", file=sys.stderr)
            return 1
    writer = EventWriter(args.events)
    # logrotate's postrotate may send SIGUSR1 to every enforcer process: reopen, never die of it.
    install_reopen_signal()
    # A service manager stops with SIGTERM: end like Ctrl-C, so that the queued events are written.
    signal.signal(signal.SIGTERM, _interrupt)
    written = skipped = 0
    reader = LineReader()
    try:
        for event in convert(_lines(args.logs, args.follow, reader), args.engine, policy, tz, args.observer):
            if event is None:
                skipped += 1
            elif writer.emit(event):
                written += 1
            else:
                writer.flush()  # queue full: let the writer catch up rather than drop log-derived evidence
                written += int(writer.emit(event))
    except KeyboardInterrupt:
        pass
    finally:
        writer.close()
    oversize = f", {reader.oversize} line(s) over {MAX_LINE_BYTES} bytes skipped" if reader.oversize else ""
    print(
        f"rpz-log: {written} event(s) written to {args.events}, {skipped} hit(s) not matched by the policy{oversize}",
        file=sys.stderr,
    )
    return 0 if writer.dropped == 0 else 1
