"""``--retention``: how long the analyst keeps events (the deleting itself: ``Ingester.prune_now``, in batches).

- ``parse_retention(text)``: ``90d``, ``12w``, ``36h``, ``1y`` (365 days), or ``forever``/``none``/empty -> seconds,
  or None (keep everything, the default). ValueError with one line for anything else, less than one hour or more than
  1000 years.
- ``describe(seconds)``: the period as the page and the log say it (``90d``).
"""

from __future__ import annotations

import re

UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
MIN_SECONDS = 3600  # less would delete what was just ingested, between two looks at the page
MAX_SECONDS = 1000 * UNITS["y"]  # the cut-off in microseconds stays far inside SQLite's 64-bit integers
_DURATION = re.compile(r"(\d{1,6})([hdwy])", re.ASCII)
KEEP_ALL = ("", "forever", "none", "all")


def parse_retention(text: str | None) -> float | None:
    value = (text or "").strip().lower()
    if value in KEEP_ALL:
        return None
    m = _DURATION.fullmatch(value)
    if not m:
        raise ValueError(f"--retention {text!r}: give a period such as 90d, 12w, 36h or 1y (or 'forever')")
    seconds = int(m.group(1)) * UNITS[m.group(2)]
    if seconds < MIN_SECONDS:
        raise ValueError(f"--retention {text!r}: at least 1h")
    if seconds > MAX_SECONDS:  # 999999y overflowed the cut-off, and every poll failed on it
        raise ValueError(f"--retention {text!r}: at most 1000y (or 'forever')")
    return float(seconds)


def describe(seconds: float | None) -> str:
    if seconds is None:
        return "forever"
    s = int(seconds)
    for unit in ("y", "w", "d"):
        if s % UNITS[unit] == 0:
            return f"{s // UNITS[unit]}{unit}"
    return f"{s // 3600}h"
