"""The text of an ``include:`` feed -> its names, every bad line located.

- ``parse_feed(text, shown, problems)``: one domain per line, or hosts-file lines (``IP name ...``, the usual
  localhost names skipped); ``#`` comments and blank lines ignored. Errors (at most ``MAX_FEED_ERRORS`` shown, then a
  count) and the over-broad warnings (a public suffix listed as a name, ``lint.public_feed_names``) go to
  ``problems`` at ``shown:LINE:COL``. Returns the names, or None when a line was bad (the include is refused whole).

Where the feed may live, how it is read (bounded, regular files only) and what an empty feed means are the
loader's (``blocklist.py``).
"""

from __future__ import annotations

import ipaddress

from . import lint
from .model import Problem
from .names import _ASCII_NAME_RE, MAX_NAME, InvalidName, normalize_name

HOSTS_FILE_SKIP = {"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost", "ip6-loopback"}
MAX_FEED_ERRORS = 20


def _is_ip(token: str) -> bool:
    try:
        ipaddress.ip_address(token)
    except ValueError:
        return False
    return True


class _Errors:
    """Bad lines of one feed: the first ``MAX_FEED_ERRORS`` located, the rest counted."""

    def __init__(self, shown: str, problems: list[Problem]) -> None:
        self.shown = shown
        self.problems = problems
        self.count = 0

    def add(self, line: int, col: int, message: str) -> None:
        self.count += 1
        if self.count <= MAX_FEED_ERRORS:
            self.problems.append(Problem(self.shown, line, col, message))

    def close(self) -> None:
        if self.count > MAX_FEED_ERRORS:
            self.problems.append(
                Problem(self.shown, 1, 1, f"{self.count - MAX_FEED_ERRORS} more invalid lines not shown")
            )


def _slow_line(line: str, lineno: int, errors: _Errors) -> list[str]:
    """A line that is not a bare lower-case ASCII name: comments, hosts-file lines, IDNs, upper case."""
    stripped = line.split("#", 1)[0].strip()
    if not stripped:
        return []
    tokens = stripped.split()
    if len(tokens) > 1 or _is_ip(tokens[0]):
        if not _is_ip(tokens[0]):
            errors.add(lineno, line.find(tokens[0]) + 1, "expected one domain per line, or 'IP name ...'")
            return []
        tokens = [t for t in tokens[1:] if t.lower() not in HOSTS_FILE_SKIP]
    out = []
    for tok in tokens:
        try:
            out.append(normalize_name(tok))
        except InvalidName as exc:
            errors.add(lineno, line.find(tok) + 1, f"invalid domain: {exc}")
    return out


def parse_feed(text: str, shown: str, problems: list[Problem]) -> list[str] | None:
    names: list[str] = []
    append = names.append
    fullmatch = _ASCII_NAME_RE.fullmatch
    errors = _Errors(shown, problems)
    for lineno, line in enumerate(text.splitlines(), 1):
        # Fast path: a bare lower-case ASCII name, the shape of nearly every line of a large feed. A-labels
        # (xn--) take the slow path, which checks their punycode.
        if len(line) <= MAX_NAME and fullmatch(line) and "xn--" not in line:
            append(line)
        else:
            names.extend(_slow_line(line, lineno, errors))
    errors.close()
    if errors.count:
        return None
    _warn_public(names, text, shown, problems)
    return names


def _warn_public(names: list[str], text: str, shown: str, problems: list[Problem]) -> None:
    for name in lint.public_feed_names(names):
        # Rare: find the line only for a flagged name, so the common case costs one set look-up per name.
        lineno, col = next(
            ((i, line.find(name) + 1) for i, line in enumerate(text.splitlines(), 1) if name in line.split()),
            (1, 1),
        )
        message = f"over-broad feed entry: {name} is a public suffix: this include blocks every name under it"
        problems.append(Problem(shown, lineno, col, message, "warning"))
