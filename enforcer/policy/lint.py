"""Over-broad rules: a careless edit that blocks (or exempts) far more than one app is a warning of ``enforcer check``.

- ``is_public_suffix(name)``: the Public Suffix List as shipped by the ``publicsuffixlist`` package (ICANN and private
  sections; the list is a data file inside the package, never downloaded at run time). An unknown single label
  (``lan``, ``internal``) counts as a public suffix too: a rule on it covers a whole namespace.
- ``public_feed_names(names)``: the same test for a large include feed. A set look-up prefilter built once from the
  list keeps a 1M-name feed at a fraction of a second; only the few candidates go through the library.
  ``public_feed_names_text(text)``: the same for a feed kept as one string (the loader's form), batch by batch
  (``public_candidates`` per batch, then ``public_in_order``: the feed parser calls them on the batches it has
  already split).
- ``name_warning`` / ``network_warning`` / ``url_warning``: the warning text for one rule (or exempt range), or None.

Thresholds (documented in docs/operators.md, section 9.3): an IPv4 prefix shorter than /8 or an IPv6 prefix shorter than
/16 is over-broad (no single vendor holds more; a /8 is exactly one legacy class A), and a url rule whose host part
covers every host (``*``) or a whole public suffix (``*.com``) while its path part matches every path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator

from publicsuffixlist import PSLFILE, PublicSuffixList, encode_idn

from .model import IPNetwork
from .nameindex import text_spans
from .urlrules import ANY_HOST, UrlPattern

MIN_PREFIX = {4: 8, 6: 16}
_PARENT = re.compile(r"\.(.*)")  # in a names text: the parent of each name that has a dot (``.`` stops at a newline)
# A path glob that matches all of these matches every path a client can send.
_PROBE_PATHS = ("/", "/a", "/a/b/c.apk", "/.well-known/x", "/%/..;x")


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@functools.cache
def _prefilter() -> tuple[frozenset[str], frozenset[str]]:
    """(every name a PSL rule mentions, every base of a wildcard rule), in Unicode and A-label forms."""
    names: set[str] = set()
    wild: set[str] = set()
    with open(PSLFILE, encoding="utf-8") as fh:
        for line in fh:
            entry = line.split(" ", 1)[0].strip().lower()
            if not entry or entry.startswith("//"):
                continue
            entry = entry.lstrip("!")
            forms = {entry, encode_idn(entry.removeprefix("*."))}
            if entry.startswith("*."):
                wild.update(f.removeprefix("*.") for f in forms)
            names.update(f.removeprefix("*.") for f in forms)
    return frozenset(names), frozenset(wild)


def is_public_suffix(name: str) -> bool:
    """True for ``com``, ``co.uk``, ``github.io``, ``lan``; False for ``qq.com`` (a normalised name)."""
    return bool(name) and _psl().is_public(name)


def public_feed_names(names: Iterable[str]) -> list[str]:
    """The names of a feed that are public suffixes, in feed order.

    A name can only be one if it is a single label, is named by a rule, or is a child of a wildcard rule's base:
    two set look-ups per name (1M names: ~0.4 s measured), the library only for those few candidates.
    """
    listed, wild = _prefilter()
    out = []
    for name in names:
        if "." in name and name not in listed and name.partition(".")[2] not in wild:
            continue
        if is_public_suffix(name):
            out.append(name)
    return out


def public_feed_names_text(text: str) -> list[str]:
    """``public_feed_names`` of a names text (one name per line, ``nameindex.py``): the same list, with the
    prefilter's tests made per batch of names in C (``public_candidates``)."""
    found: set[str] = set()
    for start, end in text_spans(text):
        found |= public_candidates(text[start:end].split("\n"), text, start, end)
    return public_in_order(text, found)


def public_candidates(names: list[str], lines: str, start: int, end: int) -> set[str]:
    """The names of one batch that may be public suffixes (a superset: ``public_in_order`` asks the library).
    ``lines[start:end]`` holds the same names one per line: a set intersection finds those a rule mentions, one
    regex pass every name's parent (``_PARENT``: what follows a line's first dot; a name without a dot has none,
    so fewer parents than names means a single label is listed). 1M names: 0.35 s instead of 1.0 s (a
    ``str.partition`` per name)."""
    listed, wild = _prefilter()
    found = set(listed.intersection(names))
    parents = _PARENT.findall(lines, start, end)
    wild_parents = wild.intersection(parents)
    if len(parents) < len(names) or wild_parents:  # rare: look at each name of this batch
        found.update(n for n in names if "." not in n or n.partition(".")[2] in wild_parents)
    return found


def public_in_order(text: str, candidates: set[str]) -> list[str]:
    """The public suffixes among ``candidates``, once per line of the names text that lists them, in feed order
    (as ``public_feed_names`` gives them)."""
    hits = [name for name in candidates if is_public_suffix(name)]
    return [name for _, name in sorted(_listings(text, hits))]


def _listings(text: str, names: list[str]) -> Iterator[tuple[int, str]]:
    """(offset, name) of every line of a names text that is one of ``names``."""
    for name in names:
        if text.startswith(f"{name}\n") or text == name:
            yield 0, name
        at = text.find(f"\n{name}\n")
        while at >= 0:
            yield at + 1, name
            at = text.find(f"\n{name}\n", at + 1)
        if text.endswith(f"\n{name}"):  # a last line without its newline
            yield len(text) - len(name), name


def name_warning(kind: str, name: str, action: str) -> str | None:
    if not is_public_suffix(name):
        return None
    if kind == "host":
        return f"over-broad rule: host {name} is a public suffix (did you mean a name below it?)"
    verb = "blocks" if action == "block" else "exempts"
    return f"over-broad rule: domain {name} is a public suffix: it {verb} every name under it"


def network_warning(net: IPNetwork, what: str) -> str | None:
    """``what`` names the rule or key ("rule: cidr", "exempt_clients:") in the message."""
    floor = MIN_PREFIX[net.version]
    if net.prefixlen >= floor:
        return None
    scope = f"every IPv{net.version} address" if net.prefixlen == 0 else f"{net.num_addresses:,} addresses"
    return f"over-broad {what} {net} covers {scope} (a prefix shorter than /{floor})"


def url_warning(pattern: UrlPattern) -> str | None:
    host = pattern.host
    if host == ANY_HOST:
        scope = "every URL"
    elif host.startswith("*.") and is_public_suffix(host[2:]):
        scope = f"every URL under the public suffix {host[2:]}"
    else:
        return None
    if pattern.query or not all(pattern.path.match(p) for p in _PROBE_PATHS):
        return None
    limited = f" (method {pattern.rule.method})" if pattern.rule.method else ""
    return f"over-broad rule: url {pattern.text} matches {scope}{limited}"
