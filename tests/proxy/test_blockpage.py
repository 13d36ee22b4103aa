"""Unit tests of ``enforcer/proxy/blockpage.py`` (and the mitmproxy responses around it, ``responses.py``).

Languages: ``choose_language`` over Accept-Language values (q-values, regional tags, refusals, hostile input), the
French page and its ``lang`` attributes, per-language policy texts (``notice: {en: ..., fr: ...}``) and the fallbacks
when the policy gives one language only.

In-process, no mitmproxy flows: a match from a small policy, the rendered bytes, the headers. The same pages through
the hooks are covered by test_addon.py (``test_block_page_*``).
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enforcer.policy import Match, load_policy
from enforcer.policy.model import AppPolicy, Rule
from enforcer.proxy import blockpage, responses
from tests.proxy.helpers import write_policy

HOSTILE = '<script>alert(1)</script> & <img src=x onerror=alert(2)> "quoted"'


def _match(tmp_path: Path, **kwargs: str) -> Match:
    policy = load_policy(write_policy(tmp_path, **kwargs))
    match = policy.match_host("blocked.test")
    assert match is not None and match.blocked
    return match


def _app(**fields: str) -> AppPolicy:
    base = {"app": "t", "name": "T", "vendor": "", "notice": "", "reference": "", "path": "t.yaml"}
    base.update(fields)
    return AppPolicy(
        app=base["app"],
        name=base["name"],
        vendor=base["vendor"],
        effective=datetime(2023, 10, 30, tzinfo=UTC),
        timezone="UTC",
        exempt_clients=(),
        notice=base["notice"],
        reference=base["reference"],
        path=base["path"],
    )


def _rule(rule_id: str = "t:domain:x.test", category: str | None = "messaging") -> Rule:
    return Rule(rule_id, "t", "block", "domain", "x.test", category, "t.yaml:5")


def test_page_names_app_vendor_rule_category_notice_reference_and_target(tmp_path: Path) -> None:
    page = blockpage.render(_match(tmp_path, notice="Ask the service desk."), "http://blocked.test/x").decode()
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>Blocked: Test App</title>" in page
    assert "Test App (Test Vendor)" in page and "Ask the service desk." in page
    assert "<code>testapp:domain:blocked.test</code> (messaging)" in page
    assert "<code>http://blocked.test/x</code>" in page
    assert "Directive &lt;b&gt;42&lt;/b&gt; &amp; co" in page  # the reference is policy input, escaped


@pytest.mark.parametrize("field", ["name", "notice", "rule_id"])
def test_every_policy_value_is_escaped(tmp_path: Path, field: str) -> None:
    page = blockpage.render(_match(tmp_path, **{field: HOSTILE}), "t").decode()
    assert "<script>" not in page and "<img" not in page
    assert html.escape(HOSTILE) in page


@pytest.mark.parametrize(
    "target", [HOSTILE, "http://x.test/<svg onload=alert(1)>", "x.test:443\r\nSet-Cookie: a=b", "\x00\u202e"]
)
def test_the_target_is_escaped(tmp_path: Path, target: str) -> None:
    page = blockpage.render(_match(tmp_path), target).decode()
    assert html.escape(target) in page
    assert "<script>" not in page and "<svg" not in page


def test_the_cached_halves_never_carry_one_target_into_another_page(tmp_path: Path) -> None:
    match = _match(tmp_path)
    first = blockpage.render(match, "http://blocked.test/first")
    second = blockpage.render(match, "http://blocked.test/second")
    assert b"first" in first and b"first" not in second and b"second" in second
    # The same rule matched through another name (``matched`` differs) shares the page of its rule.
    again = blockpage.render(Match(match.rule, match.app, "other.blocked.test"), "http://blocked.test/first")
    assert again == first


def test_fallbacks_when_the_policy_leaves_fields_empty() -> None:
    page = blockpage.render(Match(_rule(category=None), _app(name="", path="lists/t.yaml")), "x").decode()
    assert "<title>Blocked: t</title>" in page  # the app id stands in for a missing name
    assert "This connection was blocked by network policy." in page
    assert "(block)" in page  # no category
    assert "<dd>lists/t.yaml</dd>" in page  # no reference: the blocklist file


def test_headers_are_no_store_html_and_a_printable_rule_id() -> None:
    h = blockpage.headers("wechat:url:dldir1.qq.com/weixin/*")
    assert h == {
        "Content-Type": "text/html; charset=utf-8",
        "Cache-Control": "no-store",
        "Content-Language": "en",
        "Vary": "Accept-Language",
        "X-Enforcer-Rule": "wechat:url:dldir1.qq.com/weixin/*",
    }
    assert blockpage.headers("r", "fr")["Content-Language"] == "fr"
    assert blockpage.headers("r", "de")["Content-Language"] == "en"  # only the two page languages are ever named


@pytest.mark.parametrize(
    ("rule_id", "shown"),
    [
        ("a\r\nSet-Cookie: x=1", "a??Set-Cookie: x=1"),
        ("t:domain:例子.test", "t:domain:??.test"),
        ("tab\there\x00\x7f", "tab?here??"),
    ],
)
def test_a_rule_id_can_never_split_or_break_a_header(rule_id: str, shown: str) -> None:
    assert blockpage.headers(rule_id)["X-Enforcer-Rule"] == shown


def test_error_and_bad_request_pages_escape_what_they_quote() -> None:
    err = blockpage.render_error(HOSTILE).decode()
    bad = blockpage.render_bad_request(HOSTILE).decode()
    for page in (err, bad):
        assert "<script>" not in page and html.escape(HOSTILE) in page
    assert "could not be checked" in err and "cannot be read one way only" in bad


def test_responses_carry_status_headers_and_length(tmp_path: Path) -> None:
    match = _match(tmp_path)
    for r, status, rule in (
        (responses.block(match, "http://blocked.test/"), 403, "testapp:domain:blocked.test"),
        (responses.error("x.test:443"), 403, blockpage.ERROR_RULE),
        (responses.bad_request("two Host fields"), 400, blockpage.BAD_REQUEST_RULE),
    ):
        assert r.status_code == status and r.headers["X-Enforcer-Rule"] == rule
        assert r.headers["Cache-Control"] == "no-store"
        assert int(r.headers["content-length"]) == len(r.raw_content or b"")
    assert responses.bad_request("x").headers["connection"] == "close"
    assert "connection" not in responses.block(match, "x").headers


# -- languages ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "lang"),
    [
        (None, "en"),
        ("", "en"),
        ("fr", "fr"),
        ("fr-CA", "fr"),
        ("FR-ca,fr;q=0.9,en;q=0.8", "fr"),
        ("en-CA,en;q=0.9,fr-CA;q=0.8", "en"),
        ("en;q=0.5, fr;q=0.8", "fr"),  # q-values, not order, decide
        ("fr;q=0.8, en;q=0.8", "fr"),  # a tie goes to the first listed
        ("de-DE, fr;q=0.3", "fr"),  # the best language the page has
        ("de-DE, es", "en"),  # neither: the default
        ("fr;q=0, en;q=0.1", "en"),  # q=0 refuses French
        ("fr;q=0", "en"),
        ("*;q=0.5, fr;q=0.4", "en"),  # "*" stands for the default
        ("fr;q=abc, en;q=0.2", "en"),  # an unreadable q counts as 0
        ("fr;q=nan", "en"),
        ("fr;q=2", "en"),
        ("fra", "en"),  # ISO 639-2 is not the tag browsers send for French; only "fr" is
        ("  fr-ca ; q=1 ", "fr"),
        ("x" * 10_000 + ",fr", "en"),  # only the head of a huge header is read
        (",".join(["de"] * 100) + ",fr", "en"),  # and only the first ranges
    ],
)
def test_choose_language(header: str | None, lang: str) -> None:
    assert blockpage.choose_language(header) == lang


def test_french_page_has_french_text_lang_attributes_and_the_english_section(tmp_path: Path) -> None:
    page = blockpage.render(_match(tmp_path, notice="Ask the service desk."), "https://blocked.test/", "fr").decode()
    assert '<html lang="fr">' in page
    assert "<title>Bloqué\u00a0: Test App</title>" in page
    assert "<h1>L\u2019accès à Test App est bloqué sur ce réseau</h1>" in page
    # The policy has no French notice: the French sentence stands in; the English notice is in the English section.
    assert "<p>Cette connexion a été bloquée par la politique du réseau.</p>" in page
    assert "<dt>Règle</dt>" in page and "<dt>Requête</dt>" in page and "<code>https://blocked.test/</code>" in page
    # The reference exists in English only: shown, and marked as English inside the French page.
    assert '<dt>Référence</dt><dd lang="en">Directive &lt;b&gt;42&lt;/b&gt; &amp; co</dd>' in page
    section = page.split('<section lang="en">', 1)[1]
    assert "<h2>Test App is blocked on this network</h2>" in section and "<p>Ask the service desk.</p>" in section


def test_english_page_carries_a_french_section(tmp_path: Path) -> None:
    page = blockpage.render(_match(tmp_path, notice="Ask the service desk."), "x", "en").decode()
    assert '<html lang="en">' in page and "<p>Ask the service desk.</p>" in page
    main, section = page.split('<section lang="fr">', 1)
    assert "bloqué" not in main
    assert "<h2>L\u2019accès à Test App est bloqué sur ce réseau</h2>" in section
    assert "Cette connexion a été bloquée par la politique du réseau." in section
    assert 'Référence\u00a0: <span lang="en">Directive' in section


def test_per_language_notice_and_reference_from_the_policy(tmp_path: Path) -> None:
    path = write_policy(tmp_path)
    text = path.read_text(encoding="utf-8")
    text = text.replace(
        "  notice: 'Blocked by policy.'\n",
        "  notice:\n    en: Blocked by policy <EN>.\n    fr: Bloqué par la politique <FR>.\n",
    ).replace(
        '  reference: "Directive <b>42</b> & co"\n',
        "  reference: {en: Directive 42, fr: Directive 42 (version française)}\n",
    )
    path.write_text(text, encoding="utf-8")
    match = _match_from(path)
    fr = blockpage.render(match, "x", "fr").decode()
    en = blockpage.render(match, "x", "en").decode()
    assert "<p>Bloqué par la politique &lt;FR&gt;.</p>" in fr and "<dd>Directive 42 (version française)</dd>" in fr
    assert "<p>Blocked by policy &lt;EN&gt;.</p>" in fr.split('<section lang="en">', 1)[1]
    assert "<p>Blocked by policy &lt;EN&gt;.</p>" in en and "<dd>Directive 42</dd>" in en
    assert "<p>Bloqué par la politique &lt;FR&gt;.</p>" in en.split('<section lang="fr">', 1)[1]
    assert ' lang="en"' not in fr.split("<section", 1)[0].split("<body>", 1)[1]  # everything in French main is French


def _match_from(path: Path) -> Match:
    match = load_policy(path).match_host("blocked.test")
    assert match is not None and match.blocked
    return match


def test_unknown_language_renders_english(tmp_path: Path) -> None:
    match = _match(tmp_path)
    assert blockpage.render(match, "x", "de") == blockpage.render(match, "x", "en")


def test_french_block_response_headers(tmp_path: Path) -> None:
    r = responses.block(_match(tmp_path), "http://blocked.test/", "fr")
    assert r.headers["Content-Language"] == "fr" and r.headers["Vary"] == "Accept-Language"
    assert b'<html lang="fr">' in (r.raw_content or b"")
    assert int(r.headers["content-length"]) == len(r.raw_content or b"")


def test_error_and_bad_request_pages_are_bilingual() -> None:
    err = blockpage.render_error("x.test:443").decode()
    bad = blockpage.render_bad_request("two Host fields").decode()
    assert '<section lang="fr">' in err and "Cette requête a été refusée" in err and err.count("x.test:443") == 2
    assert '<section lang="fr">' in bad and "Requête incorrecte" in bad
