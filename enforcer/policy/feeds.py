"""The text of an ``include:`` feed -> its names, every bad line located.

- ``parse_feed(text, shown, problems)``: one domain per line, or hosts-file lines (``IP name ...``, the usual
  localhost names skipped); ``#`` comments and blank lines ignored. Errors (at most ``MAX_FEED_ERRORS`` shown, then a
  count) and the over-broad warnings (a public suffix listed as a name, ``lint.public_feed_names``) go to
  ``problems`` at ``shown:LINE:COL``. Returns the names, or None when a line was bad (the include is refused whole).
- ``feed_names_text(text, shown, problems)``: the same names as one string, each followed by a newline, without a
  ``str`` per name (the loader's form: a 1,000,000-name feed stays one string; ``nameindex.py``).

URL feeds (``include: {url: ..., sha256: ...}`` pinned, ``include: {url: ..., refresh: 6h, max_change: 10%}``
followed; issue 17): the loader never fetches. It reads the LOCAL copy that ``enforcer feeds update`` keeps next to
the blocklist, ``<folder of the YAML>/feeds/<first 16 hex of sha256(url)>.txt`` (``local_copy``), so a URL feed obeys
the same rule as a file feed (inside the blocklist folder, bounded read) and a swapped copy is picked up by the usual
reload (a file change).

- ``FeedSpec``: url, sha256 pin or refresh (seconds) and max_change (a fraction), the YAML file it is in.
- ``url_include(reader, node, yaml_path, limit)``: the mapping of an ``include:`` -> ``(url, local path as written
  relative to the YAML)``, or None after a located error: unknown keys, a URL that is not http(s), a bad pin, refresh
  or max_change, both a pin and a refresh, no local copy yet (the message says to run ``enforcer feeds update``), or a
  pinned copy whose bytes no longer hash to the pin.
- ``parse_spec(mapping, yaml_path)``: the same from plain YAML data (``enforcer feeds`` lists the feeds to fetch
  before any local copy exists); ValueError with a one-line reason.
- ``parse_duration("6h")`` -> seconds, ``parse_fraction("10%")`` -> 0.1.

Where the feed may live, how it is read (bounded, regular files only) and what an empty feed means are the
loader's (``blocklist.py``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import lint
from .bounded import Unreadable, read_regular
from .model import Problem
from .nameindex import text_spans
from .names import _ASCII_NAME_RE, MAX_LABEL, MAX_NAME, InvalidName, normalize_name
from .nodes import NodeReader

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
            self.problems.append(Problem(self.shown, 1, 1, _MORE.format(self.count - MAX_FEED_ERRORS)))


_MORE = "{} more invalid lines not shown"
_MORE_RE = re.compile(r"(\d+) more invalid lines not shown")


def error_count(errors: list[Problem]) -> int:
    """The invalid lines ``errors`` (a feed's error problems) stand for: each listed one, and the rest its last
    problem counts (``_Errors.close``)."""
    more = _MORE_RE.fullmatch(errors[-1].message) if errors else None
    return len(errors) - 1 + int(more[1]) if more else len(errors)


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
            # The column only for a problem that is shown: a search per token of a line holding a million bad
            # ones was quadratic (hours for a 64 MB feed).
            col = line.find(tok) + 1 if errors.count < MAX_FEED_ERRORS else 1
            errors.add(lineno, col, f"invalid domain: {exc}")
    return out


def parse_feed(text: str, shown: str, problems: list[Problem]) -> list[str] | None:
    names = feed_names_text(text, shown, problems)
    return None if names is None else names.splitlines()


# The checks of _ASCII_NAME_RE for a whole batch of lines at once: only these characters; no empty label (``..``, and
# a line break counts as a dot: no empty or dot-ended line); no label that starts or ends with a hyphen; every label
# at most 63 characters (a line longer than that, rare, is checked alone).
_NAME_CHARS = b"abcdefghijklmnopqrstuvwxyz0123456789_-.\n"
_BREAK_AS_DOT = bytes.maketrans(b"\n", b".")
# Hyphens as dots too: one search for ".." then finds every pair of the three checks (and "--", valid inside a
# label: only then are the three exact searches made). Each search is a byte-by-byte scan of the batch: one instead
# of three saves about 0.05 CPU s on a 1M-name feed (docs/performance.md, "The 1,000,000-name policy, fourth pass").
_BREAK_AND_HYPHEN_AS_DOT = bytes.maketrans(b"\n-", b"..")


def _clean_batch(batch: str) -> list[str] | None:
    """The names of ``batch`` (which ends with a newline) when every line is a bare name the line-by-line path
    would keep as it is, else None."""
    if not batch.isascii() or "xn--" in batch:
        return None
    raw = batch.encode()
    if raw.translate(None, _NAME_CHARS):
        return None
    pairs = raw.translate(_BREAK_AND_HYPHEN_AS_DOT)
    if pairs[:1] == b"." or b".." in pairs:
        dots = raw.translate(_BREAK_AS_DOT)
        if b".." in dots or b".-" in dots or b"-." in dots or dots[:1] in (b".", b"-"):
            return None
    lines = batch.split("\n")
    del lines[-1]  # the empty string after the final newline
    if max(map(len, lines)) <= MAX_LABEL:
        return lines
    if all(len(n) <= MAX_NAME and _ASCII_NAME_RE.fullmatch(n) for n in lines if len(n) > MAX_LABEL):
        return lines
    return None


def feed_names_text(text: str, shown: str, problems: list[Problem]) -> str | None:
    """``parse_feed`` as one string, every name followed by a newline (what ``nameindex.NameIndex`` stores): a
    batch of lines that are all bare names is checked at once (``_clean_batch``) and kept as it is (a clean feed
    file ending in a newline is returned unchanged, no copy); any other batch goes line by line."""
    if text.startswith("\ufeff"):  # a byte order mark, as Windows editors save a list: not part of the first name
        text = text[1:]
    errors = _Errors(shown, problems)
    pieces: list[str | tuple[int, int]] = []  # spans of ``text`` kept as they are, or rebuilt batches
    lineno = 0
    candidates: set[str] = set()  # of public suffixes (lint), gathered from the batches as they are split here
    for start, end in text_spans(text):
        batch = text[start : end + 1]  # with its newline (none at the end of a text without one)
        if not batch.endswith("\n"):
            batch += "\n"
        clean = _clean_batch(batch)
        if clean is not None:
            lineno += len(clean)
            candidates |= lint.public_candidates(clean, batch, 0, len(batch) - 1)
            if pieces and isinstance(pieces[-1], tuple) and pieces[-1][1] == start:
                pieces[-1] = (pieces[-1][0], end + 1)
            else:
                pieces.append((start, end + 1))
            continue
        names: list[str] = []
        fullmatch = _ASCII_NAME_RE.fullmatch
        for line in batch.splitlines():
            lineno += 1
            # Fast path: a bare lower-case ASCII name. A-labels (xn--) take the slow path, which checks their punycode.
            if len(line) <= MAX_NAME and fullmatch(line) and "xn--" not in line:
                names.append(line)
            else:
                names.extend(_slow_line(line, lineno, errors))
        rebuilt = "".join(f"{n}\n" for n in names)
        candidates |= lint.public_candidates(names, rebuilt, 0, len(rebuilt))
        pieces.append(rebuilt)
    errors.close()
    if errors.count:
        return None
    if len(pieces) == 1 and pieces[0] == (0, len(text)):
        out = text  # the common case: a clean file that ends in a newline, kept without a copy
    else:
        out = "".join(text[p[0] : p[1]] + ("" if text[p[1] - 1 : p[1]] == "\n" else "\n") if isinstance(p, tuple)
                      else p for p in pieces)  # fmt: skip
    _warn_public(out, candidates, text, shown, problems)
    return out


def _warn_public(names: str, candidates: set[str], text: str, shown: str, problems: list[Problem]) -> None:
    for name in lint.public_in_order(names, candidates):
        lineno, col = _line_of(name, text)
        message = f"over-broad feed entry: {name} is a public suffix: this include blocks every name under it"
        problems.append(Problem(shown, lineno, col, message, "warning"))


_OTHER_BREAKS = "\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines() also breaks lines at


def _line_of(name: str, text: str) -> tuple[int, int]:
    """(line, column) of the first line that lists ``name`` as a token. Rare (a flagged name), so it searches for the
    name's occurrences instead of splitting a large feed into a list of lines."""
    if any(c in text for c in _OTHER_BREAKS):  # lines are not just "\n"-separated: count them as splitlines() does
        return next(
            ((i, line.find(name) + 1) for i, line in enumerate(text.splitlines(), 1) if name in line.split()), (1, 1)
        )
    for m in re.finditer(f"(?<!\\S){re.escape(name)}(?!\\S)", text):  # whole tokens only
        start = text.rfind("\n", 0, m.start()) + 1
        end = text.find("\n", m.end())
        line = text[start : end if end >= 0 else len(text)]
        if name in line.split():
            return text.count("\n", 0, start) + 1, line.find(name) + 1
    return 1, 1


# -- URL feeds ------------------------------------------------------------------------------------------------------

FEED_KEYS = {"url", "sha256", "refresh", "max_change"}
FEEDS_DIR = "feeds"  # beside the YAML that includes the feed
DEFAULT_REFRESH = 24 * 3600.0
DEFAULT_MAX_CHANGE = 0.10
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class FeedSpec:
    url: str
    yaml_path: Path  # the blocklist file whose include names it
    sha256: str | None = None  # pinned: the local copy must hash to this, and an update never changes it
    refresh: float = DEFAULT_REFRESH  # followed: fetched this often by --feeds-refresh
    max_change: float = DEFAULT_MAX_CHANGE  # followed: an update adding/removing more than this share is refused

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None

    @property
    def local(self) -> Path:
        return local_copy(self.yaml_path.parent, self.url)

    @property
    def key(self) -> str:
        """The feed's short name in metrics and messages: the local copy's stem."""
        return self.local.stem


def local_copy(folder: Path, url: str) -> Path:
    return folder / FEEDS_DIR / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".txt")


def parse_duration(text: str) -> float:
    m = _DURATION_RE.fullmatch(str(text).strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"expected a duration such as 6h, 30m or 1d, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_fraction(text: str) -> float:
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"expected a share such as 10% or 0.1, got {text!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"expected a share above 0 and at most 100%, got {text!r}")
    return value


def parse_spec(data: dict[str, Any], yaml_path: Path) -> FeedSpec:
    """A FeedSpec from an include mapping's plain values; ValueError with a one-line reason."""
    unknown = set(data) - FEED_KEYS
    if unknown:
        raise ValueError(
            f"unknown key {sorted(unknown)[0]!r} in a URL include (expected: {', '.join(sorted(FEED_KEYS))})"
        )
    url = str(data.get("url") or "").strip()
    if not re.match(r"https?://[^/\s]+", url):
        raise ValueError(f"'url' must be an http:// or https:// URL, got {url!r}")
    pin = data.get("sha256")
    if pin is not None:
        pin = str(pin).strip().lower()
        if not _SHA256_RE.fullmatch(pin):
            raise ValueError(f"'sha256' must be 64 hex digits, got {data.get('sha256')!r}")
        if "refresh" in data or "max_change" in data:
            raise ValueError("a pinned feed (sha256) is never refreshed: drop 'refresh'/'max_change', or the pin")
        return FeedSpec(url, yaml_path, sha256=pin)
    refresh = parse_duration(data["refresh"]) if "refresh" in data else DEFAULT_REFRESH
    max_change = parse_fraction(data["max_change"]) if "max_change" in data else DEFAULT_MAX_CHANGE
    return FeedSpec(url, yaml_path, refresh=refresh, max_change=max_change)


def url_include(reader: NodeReader, node: yaml.Node, yaml_path: Path, limit: int) -> tuple[str, str] | None:
    """``(url, local copy relative to the YAML)`` of a URL include; None after a located error."""
    fields = reader.mapping(node, "a URL include", FEED_KEYS)
    if fields is None:
        return None
    values = {}
    for key, value_node in fields.items():
        value = reader.scalar(value_node, key)
        if value is None:
            return None
        values[key] = value
    try:
        spec = parse_spec(values, yaml_path)
    except ValueError as exc:
        reader.error(node, str(exc))
        return None
    relative = f"{FEEDS_DIR}/{spec.local.name}"
    if not spec.local.exists():
        reader.error(
            node,
            f"feed {spec.url} has no local copy yet ({relative}): run 'enforcer feeds update --blocklist "
            f"{yaml_path.parent}' to fetch it",
        )
        return None
    try:
        data = read_regular(spec.local, limit)
    except Unreadable as exc:
        reader.error(node, f"cannot read the local copy {relative} of feed {spec.url}: {exc}")
        return None
    if spec.sha256 is not None and hashlib.sha256(data).hexdigest() != spec.sha256:
        reader.error(node, f"the local copy {relative} of feed {spec.url} does not match its sha256 pin")
        return None
    return spec.url, relative
