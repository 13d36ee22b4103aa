"""URL-level rules: ``url:`` globs and ``store:`` app-store expansions, compiled into ``UrlPattern``.

A pattern has a host part (exact name, ``*.suffix`` or ``*``), a path matcher (a glob compiled to a regex, or a
store regex), required query parameters (any order, extra parameters ignored), and optionally a scheme and an HTTP
method. ``UrlIndex`` finds the patterns that may apply to a host with dictionary look-ups, so a request only tests
the few patterns of its own host.

Paths are matched as the origin will read them (``request_paths``): the percent-decoded path as sent, and that path
with backslashes as ``/``, repeated slashes merged and dot segments removed (RFC 3986 section 5.2.4, what nginx, IIS
and most frameworks serve), with and without ``;params`` (Tomcat/Jetty drop them per segment). A rule decides on
each reading, and each case-sensitively and case-insensitively (IIS and macOS serve ``/WEIXIN/`` as ``/weixin/``):
``UrlIndex.best`` returns the first blocking pattern of any reading, else the best pattern of the canonical one.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from .model import Rule
from .names import InvalidName, fast_key, normalize_name, parents

ANY_HOST = "*"


class InvalidPattern(ValueError):
    """A url/store rule that cannot be compiled; the message says why."""


@dataclass(frozen=True, slots=True)
class UrlPattern:
    rule: Rule
    host: str  # exact host, "*.suffix" or "*"
    path: re.Pattern[str]
    query: tuple[tuple[str, str], ...]
    scheme: str | None
    specificity: int
    text: str
    path_ci: re.Pattern[str] | None = None  # the same glob, case-insensitive (None: ``path`` already is)
    lists: bool = False  # a query value may be a comma-separated list of numbers (iTunes lookup?id=1,0414478124)

    def matches(
        self, scheme: str, path: str, params: dict[str, list[str]], method: str | None, *, fold: bool = False
    ) -> bool:
        if self.scheme is not None and scheme != self.scheme:
            return False
        if self.rule.method is not None and (method or "").upper() != self.rule.method:
            return False
        regex = self.path_ci if fold and self.path_ci is not None else self.path
        if regex.match(path) is None:
            return False
        for key, value in self.query:
            values = params.get(key)
            if values is None:
                return False
            if value not in values and not (self.lists and any(value in _numbers(v) for v in values)):
                return False
        return True


def _numbers(value: str) -> list[str]:
    """The items of a comma-separated list of numbers as the store reads them: ``+0414478124`` is 414478124."""
    return [item.strip().lstrip("+").lstrip("0") for item in value.split(",")]


@dataclass(frozen=True, slots=True)
class ParsedUrl:
    """A request URL in the form the matcher compares: lower-case host, percent-decoded path, query by key.

    ``path`` is the canonical reading (decoded, dot segments removed); ``paths`` every reading an origin may serve
    (``request_paths``), ``path`` first.
    """

    scheme: str
    host: str
    port: int | None
    path: str
    params: dict[str, list[str]]
    paths: tuple[str, ...] = ()


_SLASHES_RE = re.compile(r"/{2,}")
_PARAMS_RE = re.compile(r";[^/]*")
# Paths are read up to this many characters: dot segments and escapes cost work in proportion (a megabyte path took
# 120 ms of the proxy's event loop). A longer path is judged on its first MAX_PATH characters here; the proxy refuses
# it (414) wherever a url/store rule could apply, since padding could push the part that matters past the cut.
MAX_PATH = 8192


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 on an absolute path, plus merged slashes; the result always starts with ``/``."""
    out: list[str] = []
    segments = _SLASHES_RE.sub("/", path).split("/")
    for seg in segments[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    trailing = segments[-1] in (".", "..") and len(segments) > 1
    result = "/" + "/".join(out)
    if trailing and not result.endswith("/"):
        result += "/"
    return result


def request_paths(raw_path: str) -> tuple[str, ...]:
    """Every reading of a request path an origin may serve, the canonical one first (see the module docstring).

    Percent-escapes are decoded once (``%252e`` stays ``%2e``: decoding twice is what IIS refuses by default).
    """
    decoded = unquote(raw_path[:MAX_PATH] or "/", errors="replace")
    if not decoded.startswith("/"):
        decoded = "/" + decoded
    slashed = decoded.replace("\\", "/")
    canonical = remove_dot_segments(slashed)
    readings = [canonical]
    if decoded != canonical:
        readings.append(decoded)
    if ";" in slashed:
        stripped = remove_dot_segments(_PARAMS_RE.sub("", slashed))
        if stripped not in readings:
            readings.append(stripped)
    return tuple(readings)


def parse_request_url(url: str) -> ParsedUrl:
    """Split ``url`` for matching. Raises ValueError for a URL without a host."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "market":
        # market://details?id=PKG: the "host" is the Play action; keep it as the host so store rules can see it.
        host = parts.netloc.lower()
    else:
        host = parts.hostname or ""
        host = fast_key(host) if host else ""
    if not host:
        raise ValueError(f"URL has no host: {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"URL has an invalid port: {url!r}") from None
    paths = request_paths(parts.path)
    params: dict[str, list[str]] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        params.setdefault(key.lower(), []).append(value.lower())
    return ParsedUrl(scheme, host, port, paths[0], params, paths)


def _glob_to_regex(glob: str) -> re.Pattern[str]:
    depth = 0
    for ch in glob:
        if ch == "[":
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
    if depth:
        raise InvalidPattern(f"unterminated character class '[' in glob {glob!r}")
    return re.compile(fnmatch.translate(glob))


def _literal_len(text: str) -> int:
    return sum(1 for ch in text if ch not in "*?[]")


def compile_url_rule(rule: Rule) -> UrlPattern:
    """Compile a ``url:`` rule value ``[scheme://]HOSTGLOB/PATHGLOB[?k=v&...]``."""
    text = rule.value
    scheme: str | None = None
    rest = text
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise InvalidPattern(f"scheme must be http or https, not {scheme!r}")
    query_text = ""
    if "?" in rest.split("/", 1)[-1] and "/" in rest:
        # A '?' after the first '/' may be a glob wildcard or the query separator: the query starts at the
        # first '?' that is followed by 'key='.
        m = re.search(r"\?(?=[^/?=&]+=)", rest)
        if m:
            rest, query_text = rest[: m.start()], rest[m.start() + 1 :]
    if "/" not in rest:
        raise InvalidPattern(f"url rule needs HOST/PATH (e.g. 'dldir1.qq.com/weixin/*'), got {text!r}")
    host_part, path_part = rest.split("/", 1)
    path_glob = "/" + path_part
    host = _compile_host(host_part)
    query: list[tuple[str, str]] = []
    if query_text:
        for item in query_text.split("&"):
            if "=" not in item:
                raise InvalidPattern(f"query parameter must be key=value, got {item!r}")
            key, value = item.split("=", 1)
            if not key:
                raise InvalidPattern(f"empty query parameter name in {text!r}")
            query.append((unquote(key).lower(), unquote(value).lower()))
    path_re = _glob_to_regex(unquote(path_glob))
    spec = _literal_len(host_part) + _literal_len(path_glob) + _literal_len(query_text)
    path_ci = re.compile(path_re.pattern, re.IGNORECASE)
    return UrlPattern(rule, host, path_re, tuple(query), scheme, spec, text, path_ci)


def _compile_host(host_part: str) -> str:
    if host_part == ANY_HOST:
        return ANY_HOST
    if host_part.startswith("*."):
        try:
            return "*." + normalize_name(host_part[2:])
        except InvalidName as exc:
            raise InvalidPattern(f"bad host in url rule: {exc}") from None
    if any(ch in host_part for ch in "*?["):
        raise InvalidPattern(f"host must be a name, '*.suffix' or '*', not {host_part!r}")
    try:
        return normalize_name(host_part)
    except InvalidName as exc:
        raise InvalidPattern(f"bad host in url rule: {exc}") from None


_PKG_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)+")
_APPLE_ID_RE = re.compile(r"[0-9]{1,12}")
STORES = ("google_play", "apple", "tencent")


def check_store_id(store: str, value: str) -> None:
    if store == "apple":
        if not _APPLE_ID_RE.fullmatch(value):
            raise InvalidPattern(f"apple store id must be the numeric track id (e.g. '414478124'), got {value!r}")
    elif not _PKG_RE.fullmatch(value):
        raise InvalidPattern(f"{store} id must be a package name like 'com.tencent.mm', got {value!r}")


def compile_store_rule(rule: Rule, stores: dict[str, tuple[str, ...]]) -> list[UrlPattern]:
    """Expand ``store: {google_play, apple, tencent}`` into the store pages and downloads of those apps."""
    out: list[UrlPattern] = []

    def add(
        host: str, path: str, query: tuple[tuple[str, str], ...] = (), scheme: str | None = None, lists: bool = False
    ) -> None:
        text = f"{host}{path}" + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else "")
        regex = re.compile(path, re.IGNORECASE)
        out.append(UrlPattern(rule, host, regex, query, scheme, 1000 + len(text), text, lists=lists))

    for pkg in stores.get("google_play", ()):
        q = (("id", pkg.lower()),)
        # /details/<Name>?id=PKG is a common link form too (the slug is ignored by the store).
        add("play.google.com", r"/store/apps/details(?:/[^/]*)?/?\Z", q)
        add("details", r"/?\Z", q, scheme="market")
    for track in (t.lstrip("0") or "0" for t in stores.get("apple", ())):
        seg = rf"(?:.*/)?id0*{track}(?:/.*)?\Z"  # a number: leading zeros name the same app
        add("apps.apple.com", seg)
        add("itunes.apple.com", seg)
        # The Search API: with a storefront (/cn/lookup, the usual update check) or without, and several apps at once
        # (id=A,B) (blocklists/README.md, store rules).
        add("itunes.apple.com", r"(?:/[a-z]{2})?/lookup/?\Z", (("id", track),), lists=True)
    for pkg in stores.get("tencent", ()):
        add("a.app.qq.com", r".*\Z", (("pkgname", pkg.lower()),))
        add("sj.qq.com", rf"/appdetail/{re.escape(pkg)}(?:/.*)?\Z")
    return out


class UrlIndex:
    """Patterns grouped by host so a request tests only its own host's patterns."""

    def __init__(self, patterns: Iterable[UrlPattern]) -> None:
        self._exact: dict[str, list[UrlPattern]] = {}
        self._suffix: dict[str, list[UrlPattern]] = {}
        self._any: list[UrlPattern] = []
        self.patterns: tuple[UrlPattern, ...] = tuple(patterns)
        for p in self.patterns:
            if p.host == ANY_HOST:
                self._any.append(p)
            elif p.host.startswith("*."):
                self._suffix.setdefault(p.host[2:], []).append(p)
            else:
                self._exact.setdefault(p.host, []).append(p)

    def __len__(self) -> int:
        return len(self.patterns)

    def candidates(self, host: str) -> Iterator[UrlPattern]:
        yield from self._exact.get(host, ())
        if self._suffix:
            for suffix in parents(host)[1:]:
                yield from self._suffix.get(suffix, ())
        yield from self._any

    def has_host_rules(self, host: str, *, any_host: bool = False) -> bool:
        if host in self._exact or (any_host and self._any):
            return True
        return bool(self._suffix) and any(s in self._suffix for s in parents(host)[1:])

    def best(self, url: ParsedUrl, method: str | None) -> UrlPattern | None:
        """The most specific matching pattern for the canonical path; at equal specificity an allow rule wins."""
        return self.best_for(url, url.path, method)

    def readings(self, url: ParsedUrl, method: str | None) -> Iterator[UrlPattern | None]:
        """``best_for`` each reading of the path (``ParsedUrl.paths``), case-sensitive then case-insensitive."""
        for fold in (False, True):
            for path in url.paths or (url.path,):
                yield self.best_for(url, path, method, fold=fold)

    def best_for(self, url: ParsedUrl, path: str, method: str | None, *, fold: bool = False) -> UrlPattern | None:
        best: UrlPattern | None = None
        for p in self.candidates(url.host):
            if not p.matches(url.scheme, path, url.params, method, fold=fold):
                continue
            if (
                best is None
                or p.specificity > best.specificity
                or (p.specificity == best.specificity and p.rule.action == "allow" and best.rule.action == "block")
            ):
                best = p
        return best
