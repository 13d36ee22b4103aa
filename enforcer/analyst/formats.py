"""The report document (``report.build_report``) as ``enforcer report`` and ``/api/report.csv`` print it.

- ``to_csv`` (RFC 4180, CRLF rows; ``csv_cell`` neutralises spreadsheet formulas; the ``clients`` rows, then the
  ``bypass`` rows, told apart by the last column ``section``), ``to_json``, ``to_table`` (the terminal: apps,
  devices, and the bypass attempts in their own section; control characters shown escaped); ``FORMATTERS`` by
  ``--format`` name.
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from typing import Any

CLIENT_FIELDS = (
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
)
CSV_FIELDS = (*CLIENT_FIELDS, "section")
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
    w.writerow(CSV_FIELDS)
    for section in ("clients", "bypass"):
        for row in report.get(section, ()):
            w.writerow([*(csv_cell(row[k]) for k in CLIENT_FIELDS), section])
    return buf.getvalue()


def to_json(report: dict[str, Any]) -> str:
    """The document with one row per line: ``json.dumps(indent=...)`` runs the pure-Python encoder, whose chunks
    for tens of thousands of rows cost more memory than the whole report pass; this uses the C encoder per row."""
    out = ["{"]
    items = list(report.items())
    for i, (key, value) in enumerate(items):
        sep = "," if i < len(items) - 1 else ""
        head = "  " + json.dumps(key, ensure_ascii=False) + ": "
        if isinstance(value, list) and value:
            out.append(head + "[")
            out += ["    " + json.dumps(v, ensure_ascii=False) + "," for v in value]
            out[-1] = out[-1][:-1]
            out.append("  ]" + sep)
        else:
            out.append(head + json.dumps(value, ensure_ascii=False) + sep)
    out.append("}")
    return "\n".join(out) + "\n"


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
        f"since {report['since'] or '-'}  until {report['until'] or '-'}  "
        f"attempt = hits within {report.get('attempt_window_seconds', '-')} s",
        "",
    ]
    lines += _table(
        ["APP", "ATTEMPTS", "HITS", "CLIENTS", "FIRST SEEN", "LAST SEEN"],
        [
            [
                _printable(a["app"]),
                str(a["attempts"]),
                str(a["hits"]),
                str(a["clients"]),
                a["first_seen"],
                a["last_seen"],
            ]
            for a in report["apps"]
        ],
        {1, 2, 3},
    )
    lines.append("")
    lines += _devices(report["clients"])
    if not report["clients"]:
        lines.append("(no events)")
    if report.get("bypass"):
        lines += ["", "Bypass attempts (control apps: counted, never non-compliance)", ""]
        lines += _devices(report["bypass"])
    return "\n".join(lines) + "\n"


def _devices(rows: list[dict[str, Any]]) -> list[str]:
    return _table(
        [
            "CLIENT",
            "DEVICE",
            "OWNER",
            "UNIT",
            "IDENTITY",
            "APP",
            "ATTEMPTS",
            "HITS",
            "ENFORCED",
            "FIRST SEEN",
            "LAST SEEN",
        ],
        [
            [
                _printable(c["client"]),
                _printable(c["device"] or c["mac"] or c["user"]),
                _printable(c["owner"]),
                _printable(c["unit"]),
                c["identity"],
                _printable(c["app"]),
                str(c["attempts"]),
                str(c["hits"]),
                str(c["enforced_attempts"]),
                c["first_seen"],
                c["last_seen"],
            ]
            for c in rows
        ],
        {6, 7, 8},
    )


FORMATTERS = {"json": to_json, "csv": to_csv, "table": to_table}
