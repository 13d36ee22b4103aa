"""Domain-name normalisation shared by the blocklist parser, the matcher and both front-ends.

A name is compared in one canonical form: lower case, no trailing dot, internationalised labels as their
A-label (punycode) form. ``normalize_name`` validates and raises ``InvalidName`` with a reason;
``fast_key`` is the hot-path variant for names already known to be ASCII (DNS wire names, HTTP hosts).
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME = 253
MAX_LABEL = 63

# Letters, digits, hyphen, and underscore (service labels such as _dmarc occur in real zones and feeds).
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_ASCII_NAME_RE = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


# Control, format-less, unassigned, private-use, surrogate and separator characters never occur in a host name.
_BAD_CATEGORIES = {"Cc", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"}


# Longer than any name, even one full of characters IDNA maps to nothing (soft hyphens): refused unread.
_MAX_INPUT = 4 * 256


def _short(text: str) -> str:
    """``text`` quoted for a message, cut to a readable length (a hostile token may be megabytes)."""
    return repr(text) if len(text) <= 80 else repr(text[:77]) + "..."


_IDNA_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


class InvalidName(ValueError):
    """A domain name that cannot be a DNS name; the message says why."""


def _idna_label(label: str) -> str:
    try:
        encoded = label.encode("idna").decode("ascii")
    except UnicodeError as exc:
        # Python 3.11 wraps the codec's reason ("encoding with 'idna' codec failed (UnicodeError: X)"), 3.12 does
        # not: report the reason alone so the message is the same on both.
        reason = str(exc)
        wrapped = re.search(r"\(UnicodeError: (.*)\)$", reason)
        raise InvalidName(
            f"invalid internationalised label {_short(label)}: {wrapped[1] if wrapped else reason}"
        ) from None
    return encoded.lower()


def normalize_name(name: str) -> str:
    """Return the canonical form of ``name`` or raise InvalidName.

    Idempotent: ``normalize_name(normalize_name(x)) == normalize_name(x)``.
    """
    if not isinstance(name, str):
        raise InvalidName(f"expected a domain name, got {type(name).__name__}")
    n = name.strip()
    if len(n) > _MAX_INPUT:
        # Before the IDNA codec, which takes seconds and gigabytes on a megabyte token (a hostile feed line).
        raise InvalidName(f"domain name longer than {MAX_NAME} characters ({len(n)}): {_short(n)}")
    if not n.isascii():
        # The dots IDNA reads as "." (the stdlib codec's, which getaddrinfo applies), mapped before the trailing one
        # is stripped: "weixin.qq.com\u3002" is weixin.qq.com to the resolver, and must be to the matcher.
        n = n.translate(_IDNA_DOTS)
    if n.endswith("."):
        n = n[:-1]
    if not n:
        raise InvalidName("empty domain name")
    if not n.isascii():
        # IDNA 2003 via the stdlib codec; it maps case too.
        n = ".".join(_idna_label(lbl) if lbl and not lbl.isascii() else lbl for lbl in n.split("."))
    n = n.lower()
    if len(n) > MAX_NAME:
        raise InvalidName(f"domain name longer than {MAX_NAME} characters ({len(n)})")
    if _ASCII_NAME_RE.fullmatch(n):
        for label in n.split("."):
            if label.startswith("xn--"):
                _check_a_label(label)
        return n
    for label in n.split("."):
        if not label:
            raise InvalidName(f"empty label in {_short(name)}")
        if len(label) > MAX_LABEL:
            raise InvalidName(f"label longer than {MAX_LABEL} characters: {label[:20]}...")
        if not _LABEL_RE.fullmatch(label):
            raise InvalidName(f"bad character in label {_short(label)} (letters, digits, '-' and '_' only)")
    raise InvalidName(f"invalid domain name {_short(name)}")  # pragma: no cover - regex and loop agree


def _check_a_label(label: str) -> None:
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
    except UnicodeError:
        raise InvalidName(f"invalid punycode label {_short(label)}") from None
    # An A-label stands for a Unicode label: it must decode to something non-ASCII and printable ("xn--a" decodes to
    # a control character). Not a full IDNA 2008 check, which would need the idna package.
    if decoded.isascii() or any(unicodedata.category(ch) in _BAD_CATEGORIES for ch in decoded):
        raise InvalidName(f"invalid punycode label {_short(label)}: it does not encode a valid Unicode label")


def fast_key(name: str) -> str:
    """Lower-case, strip one trailing dot; IDNs go through the full normaliser.

    For lookups only: an invalid name simply matches nothing, it is never an error on the hot path.
    """
    if name.isascii():
        n = name.lower()
        return n[:-1] if n.endswith(".") else n
    try:
        return normalize_name(name)
    except InvalidName:
        pass
    # Not a valid name, but maybe one getaddrinfo still resolves: key it as the resolver would be asked (the stdlib
    # IDNA codec's output), so that no spelling of a listed name reaches it unjudged.
    try:
        n = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return name.lower().rstrip(".")  # no resolver is asked this either: Python cannot encode it
    return n[:-1] if n.endswith(".") else n


def parents(name: str) -> list[str]:
    """``a.b.c`` -> ``["a.b.c", "b.c", "c"]``: the name and every suffix on a label boundary."""
    out = [name]
    i = name.find(".")
    while i >= 0:
        out.append(name[i + 1 :])
        i = name.find(".", i + 1)
    return out
