"""enforcer/policy/urlrules.py as a unit: compiling url and store rules, parsing request URLs, the index, and path
readings (dot segments, slashes, escapes, case, ;params): URL rules match what the origin will serve.

The shared table (tests/data/match_cases.yaml) holds the shipped-policy rows; here the mechanism itself: RFC 3986
remove_dot_segments, the readings of one path, compiled patterns one by one, and a small policy where an allow
exception and a block rule meet.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from enforcer.policy import load_policy
from enforcer.policy.model import Rule
from enforcer.policy.urlrules import (
    ANY_HOST,
    InvalidPattern,
    UrlIndex,
    check_store_id,
    compile_store_rule,
    compile_url_rule,
    parse_request_url,
    remove_dot_segments,
    request_paths,
)
from tests.policy.policy_helpers import app_yaml, write


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # RFC 3986 section 5.2.4 and 5.4 examples, on absolute paths.
        ("/a/b/c/./../../g", "/a/g"),
        ("/b/c/d;p/../g", "/b/c/g"),
        ("/./g", "/g"),
        ("/../g", "/g"),
        ("/../../g", "/g"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/../", "/a/"),
        ("/g.", "/g."),
        ("/.g", "/.g"),
        ("/g..", "/g.."),
        ("/", "/"),
        ("//a///b", "/a/b"),
        ("/a//../b", "/b"),
    ],
)
def test_remove_dot_segments(path: str, expected: str) -> None:
    assert remove_dot_segments(path) == expected


def test_readings_of_a_path() -> None:
    assert request_paths("/weixin/x.apk") == ("/weixin/x.apk",)
    assert request_paths("") == ("/",)
    assert request_paths("/x/%2e%2e/weixin/x") == ("/weixin/x", "/x/../weixin/x")
    assert request_paths("/qqfile%2f..%2fweixin") == ("/weixin", "/qqfile/../weixin")
    assert request_paths("\\weixin\\x")[0] == "/weixin/x"
    assert request_paths("/a;p=1/../weixin;q/x") == ("/weixin;q/x", "/a;p=1/../weixin;q/x", "/weixin/x")
    assert request_paths("/%252e/x") == ("/%2e/x",)  # decoded once only


def test_canonical_reading_is_idempotent_and_absolute() -> None:
    rng = random.Random(10)
    alphabet = ["/", "//", ".", "..", "%2e", "%2F", "\\", "a", "weixin", ";p", "%", "%zz"]
    for _ in range(3000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        canonical = request_paths(raw)[0]
        assert canonical.startswith("/"), raw
        assert "//" not in canonical and "/./" not in canonical and "/../" not in canonical, raw
        assert not canonical.endswith(("/.", "/..")), raw
        assert remove_dot_segments(canonical) == canonical, raw


RULES = """\
block:
  - domain: dl.example.com
    category: download
  - url: "files.example.org/app/*"
    category: download
  - url: "files.example.org/Docs/*"
    category: download
allow:
  - url: "dl.example.com/public/*"
"""


def test_block_wins_across_readings(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "t.yaml", app_yaml("t", RULES)))

    def verdict(url: str) -> str:
        m = policy.match_url(url)
        return "none" if m is None else m.verdict

    # The canonical reading decides the allow exception...
    assert verdict("https://dl.example.com/public/readme.txt") == "allow"
    assert verdict("https://dl.example.com//public/./readme.txt") == "allow"
    # ...but an allow exception cannot be used to climb out of its folder.
    assert verdict("https://dl.example.com/public/../private/x.apk") == "block"
    assert verdict("https://dl.example.com/public/%2e%2e/private/x.apk") == "block"
    assert verdict("https://dl.example.com/PUBLIC/readme.txt") == "block"  # only /public/ is excepted
    # Blocked folders under every reading, in both cases (a glob with upper case too).
    for path in ("/app/x", "//app/x", "/x/../app/x", "/APP/x", "/app;v=1/x", "/docs/a", "/DOCS/a", "/Docs/a"):
        assert verdict("http://files.example.org" + path) == "block", path
    for path in ("/other/x", "/other/app/x", "/appx", "/%252e/app/x"):
        assert verdict("http://files.example.org" + path) == "none", path


def _rule(value: str, action: str = "block", method: str | None = None, kind: str = "url") -> Rule:
    return Rule(f"t:{value}", "t", action, kind, value, "download", "t.yaml:1", method)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "host", "scheme", "query"),
    [
        ("dldir1.qq.com/weixin/*", "dldir1.qq.com", None, ()),
        ("HTTPS://DLDir1.QQ.com/weixin/*", "dldir1.qq.com", "https", ()),
        ("*.qq.com/weixin/*", "*.qq.com", None, ()),
        ("*/weixin/*.apk", ANY_HOST, None, ()),
        ("a.example/dl?ID=Com.Tencent.MM&x=%41", "a.example", None, (("id", "com.tencent.mm"), ("x", "a"))),
        ("a.example/f?.apk", "a.example", None, ()),  # '?' not followed by key=: a glob wildcard
        ("bücher.example/x", "xn--bcher-kva.example", None, ()),
    ],
)
def test_compile_url_rule_parts(value: str, host: str, scheme: str | None, query: tuple) -> None:
    p = compile_url_rule(_rule(value))
    assert (p.host, p.scheme, p.query, p.text) == (host, scheme, query, value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ftp://a.example/x", "scheme must be http or https"),
        ("a.example", "needs HOST/PATH"),
        ("a.example?k=1", "needs HOST/PATH"),
        ("a.example/x?k=1&j", "key=value"),
        ("a.example/x?k=1&=2", "empty query parameter name"),
        ("a*.example/x", "host must be a name"),
        ("*.-bad-.example/x", "bad host"),
        ("a.example/[x", "unterminated character class"),
    ],
)
def test_compile_url_rule_refuses(value: str, message: str) -> None:
    with pytest.raises(InvalidPattern, match=message):
        compile_url_rule(_rule(value))


def test_pattern_matches_scheme_method_path_and_query() -> None:
    p = compile_url_rule(_rule("https://a.example/dl/*.apk?id=x", method="POST"))
    u = parse_request_url("https://a.example/dl/v1.apk?ID=X&other=1")
    assert p.matches(u.scheme, u.path, u.params, "post")
    assert not p.matches("http", u.path, u.params, "POST")  # scheme
    assert not p.matches(u.scheme, u.path, u.params, "GET")  # method
    assert not p.matches(u.scheme, u.path, u.params, None)
    assert not p.matches(u.scheme, "/dl/v1.zip", u.params, "POST")  # path
    assert not p.matches(u.scheme, u.path, {"id": ["y"]}, "POST")  # query value
    assert not p.matches(u.scheme, "/DL/v1.apk", u.params, "POST")  # case-sensitive reading ...
    assert p.matches(u.scheme, "/DL/v1.apk", u.params, "POST", fold=True)  # ... and the folded one


def test_specificity_counts_literal_characters() -> None:
    short = compile_url_rule(_rule("a.example/*"))
    long = compile_url_rule(_rule("a.example/weixin/*"))
    query = compile_url_rule(_rule("a.example/weixin/*?id=1"))
    assert short.specificity < long.specificity < query.specificity


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "path", "params"),
    [
        ("http://A.Example:8080/x/../y?K=V&k=w", "http", "a.example", 8080, "/y", {"k": ["v", "w"]}),
        ("a.example/p", "http", "a.example", None, "/p", {}),
        ("https://a.example.", "https", "a.example", None, "/", {}),
        ("market://details?id=com.tencent.mm", "market", "details", None, "/", {"id": ["com.tencent.mm"]}),
        ("http://[2001:db8::1]:80/x", "http", "2001:db8::1", 80, "/x", {}),
    ],
)
def test_parse_request_url(url: str, scheme: str, host: str, port: int | None, path: str, params: dict) -> None:
    u = parse_request_url(url)
    assert (u.scheme, u.host, u.port, u.path, u.params) == (scheme, host, port, path, params)
    assert u.paths[0] == u.path


@pytest.mark.parametrize("url", ["http:///x", "http://:80/x", "http://a.example:99999/x", "http://a.example:x/"])
def test_parse_request_url_refuses(url: str) -> None:
    with pytest.raises(ValueError, match=r"no host|invalid port"):
        parse_request_url(url)


def test_store_ids_are_checked() -> None:
    check_store_id("apple", "414478124")
    check_store_id("google_play", "com.tencent.mm")
    check_store_id("tencent", "com.tencent.mm")
    for store, bad in (("apple", "id414478124"), ("apple", "1" * 13), ("google_play", "mm"), ("tencent", "1com.x")):
        with pytest.raises(InvalidPattern):
            check_store_id(store, bad)


def test_store_rule_expands_to_every_store_page() -> None:
    rule = _rule("s", kind="store")
    index = UrlIndex(
        compile_store_rule(
            rule, {"google_play": ("com.tencent.mm",), "apple": ("414478124",), "tencent": ("com.tencent.mm",)}
        )
    )
    blocked = [
        "https://play.google.com/store/apps/details?id=com.tencent.mm",
        "https://play.google.com/store/apps/details/?hl=en&id=COM.TENCENT.MM",
        "market://details?id=com.tencent.mm",
        "https://apps.apple.com/us/app/wechat/id414478124",
        "https://itunes.apple.com/app/id414478124?mt=8",
        "https://itunes.apple.com/lookup?id=414478124",
        "https://a.app.qq.com/o/simple.jsp?pkgname=com.tencent.mm",
        "https://sj.qq.com/appdetail/com.tencent.mm",
    ]
    for url in blocked:
        assert index.best(parse_request_url(url), "GET") is not None, url
    for url in (
        "https://play.google.com/store/apps/details?id=com.tencent.mmx",
        "https://apps.apple.com/us/app/other/id4144781240",
        "https://itunes.apple.com/lookup?id=1",
        "https://sj.qq.com/appdetail/com.tencent.mmx",
        "https://a.app.qq.com/o/simple.jsp",
    ):
        assert index.best(parse_request_url(url), "GET") is None, url


def test_index_candidates_and_precedence() -> None:
    exact = compile_url_rule(_rule("a.example/x/*"))
    suffix = compile_url_rule(_rule("*.example/x/*"))
    anyhost = compile_url_rule(_rule("*/x/y"))
    allow = compile_url_rule(_rule("a.example/x/*", action="allow"))
    index = UrlIndex([exact, suffix, anyhost, allow])
    assert len(index) == 4
    assert list(index.candidates("a.example")) == [exact, allow, suffix, anyhost]
    assert list(index.candidates("b.a.example")) == [suffix, anyhost]
    assert list(index.candidates("example")) == [anyhost]  # *.example does not cover example itself
    assert index.has_host_rules("a.example") and index.has_host_rules("z.example")
    assert not index.has_host_rules("other.test") and index.has_host_rules("other.test", any_host=True)
    # Equal specificity: allow wins; a longer literal beats both.
    assert index.best(parse_request_url("http://a.example/x/z"), None) is allow
    assert index.best(parse_request_url("http://b.example/x/y"), None) is suffix
    assert UrlIndex([anyhost]).best(parse_request_url("http://q.test/x/y"), None) is anyhost
    # Every reading of the path, then folded: a block on any reading is visible.
    readings = list(index.readings(parse_request_url("http://b.example/X/../x/z"), None))
    assert suffix in readings
