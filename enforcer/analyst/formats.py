"""The report document (``report.build_report``) as ``enforcer report`` and ``/api/report.csv`` print it.

- ``to_csv`` (RFC 4180, CRLF rows; ``csv_cell`` neutralises spreadsheet formulas), ``to_json``, ``to_table`` (the
  terminal; control characters shown escaped); ``FORMATTERS`` by ``--format`` name.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from typing import Any

CLIENT_FIELDS = ("client", "device", "app", "attempts", "enforced_attempts", "first_seen", "last_seen")
_FORMULA = frozenset("=+-@")
_CONTROL_START = ("\t", "\r", "\n")


def csv_cell(value: Any) -> Any:
    """One CSV cell, with spreadsheet formulas neutralised (OWASP CSV injection): a text that starts with a tab, CR
    or LF, or whose first non-blank character is ``= + - @`` or a compatibility form of one (full-width ``＝ ＋ － ＠``,
    small ``﹦ ﹢ ﹣ ﹫``: NFKC maps them to ASCII, and spreadsheets do the same), gets a leading ``'``, which
    spreadsheets read as "text" and which a reader strips to get the value back."""
    if value is None:
        return ""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith(_CONTROL_START):
        return "'" + value
    head = value.lstrip()
    if head and (head[0] in _FORMULA or unicodedata.normalize("NFKC", head[0])[:1] in _FORMULA):
        return "'" + value
    return value


def to_csv(report: dict[str, Any]) -> str:
    buf = io.StringIO()
    # RFC 4180 CRLF rows: the csv module quotes a field holding any character of the line terminator, so with
    # "\n" alone a CR inside a hostile value would go out unquoted and split the row in a spreadsheet.
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CLIENT_FIELDS)
    for row in report["clients"]:
        w.writerow([csv_cell(row[k]) for k in CLIENT_FIELDS])
    return buf.getvalue()


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    return [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def _printable(value: Any) -> str:
    # Terminal output: control characters in event data must not move the cursor or recolour the screen.
    text = "-" if value is None else str(value)
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def to_table(report: dict[str, Any]) -> str:
    lines = [
        f"Compliance report  generated {report['generated_at']}  "
        f"since {report['since'] or '-'}  until {report['until'] or '-'}",
        "",
    ]
    lines += _table(
        ["APP", "ATTEMPTS", "CLIENTS", "FIRST SEEN", "LAST SEEN"],
        [
            [_printable(a["app"]), str(a["attempts"]), str(a["clients"]), a["first_seen"], a["last_seen"]]
            for a in report["apps"]
        ],
        {1, 2},
    )
    lines.append("")
    lines += _table(
        ["CLIENT", "DEVICE", "APP", "ATTEMPTS", "ENFORCED", "FIRST SEEN", "LAST SEEN"],
        [
            [
                _printable(c["client"]),
                _printable(c["device"]),
                _printable(c["app"]),
                str(c["attempts"]),
                str(c["enforced_attempts"]),
                c["first_seen"],
                c["last_seen"],
            ]
            for c in report["clients"]
        ],
        {3, 4},
    )
    if not report["clients"]:
        lines.append("(no events)")
    return "\n".join(lines) + "\n"


FORMATTERS = {"json": to_json, "csv": to_csv, "table": to_table}
