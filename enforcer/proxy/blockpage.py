"""The block page: a small self-contained HTML document, in English and French, and the headers of the 403 that
carries it.

Every value from the policy or the request goes through ``html.escape``: blocklists and URLs are input, not markup.

- ``choose_language(accept_language)``: ``"en"`` or ``"fr"`` from an ``Accept-Language`` header (q-values honoured,
  ``fr-CA`` -> ``fr``, a language refused with ``q=0`` never chosen); English when the header names neither.
- ``render(match, target, lang)``: the page (bytes) in ``lang``, with a second section in the other official
  language: a page shown instead of a blocked site cannot offer a working link to "the other language" (the link
  would be another request to the blocked host, answered by the same page), so both texts are on the page, the
  chosen one first, each under its own ``lang`` attribute. The policy's ``notice``/``reference`` come from
  ``AppPolicy.localized``; a language the policy does not give gets a generic sentence in that language (the
  notice) or the English text marked ``lang="en"`` (the reference). The policy part of a rule's page is escaped once
  per (rule, language) and cached.
- ``headers(rule_id, lang)``: the response headers (``Content-Language``, ``Vary: Accept-Language``).
- ``render_error`` (``ERROR_RULE``: refused because the addon could not decide, fail closed) and
  ``render_bad_request`` (``BAD_REQUEST_RULE``: a Host that reads two ways): bilingual pages.
"""

from __future__ import annotations

import functools
import html

from enforcer.policy import Match
from enforcer.policy.model import AppPolicy, TextField, primary_tag

STATUS = 403
ERROR_RULE = "enforcer:error"
BAD_REQUEST_RULE = "enforcer:bad-host"
PATH_TOO_LONG_RULE = "enforcer:path-too-long"
LANGUAGES = ("en", "fr")  # Canada's two official languages; the first is the default
DEFAULT_LANGUAGE = LANGUAGES[0]
MAX_ACCEPT_LANGUAGE = 4096  # characters of Accept-Language read (a header is a few dozen; the rest is ignored)
MAX_LANGUAGE_RANGES = 32

# The words of the page, per language. French: Office québécois de la langue française / Termium usage (a
# non-breaking space before ':'; "politique du réseau").
_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "blocked": "Blocked",
        "heading": "{title} is blocked on this network",
        "notice": "This connection was blocked by network policy.",
        "application": "Application",
        "rule": "Rule",
        "request": "Request",
        "reference": "Reference",
        "language": "English",
    },
    "fr": {
        "blocked": "Bloqué",
        "heading": "L\u2019accès à {title} est bloqué sur ce réseau",
        "notice": "Cette connexion a été bloquée par la politique du réseau.",
        "application": "Application",
        "rule": "Règle",
        "request": "Requête",
        "reference": "Référence",
        "language": "Français",
    },
}
_COLON = {"en": ":", "fr": "\u00a0:"}

_PAGE = """<!DOCTYPE html>
<html lang="{lang}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{blocked}{colon} {title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:44em;margin:3em auto;padding:0 1em;color:#222}}
h1{{font-size:1.4em}} h2{{font-size:1.1em}} dt{{font-weight:bold;margin-top:.8em}}
code{{background:#f3f3f3;padding:0 .2em}} section{{border-top:1px solid #ccc;margin-top:2em;color:#444}}</style>
</head>
<body>
<main>
<h1>{heading}</h1>
<p{notice_lang}>{notice}</p>
<dl>
<dt>{w_application}</dt><dd>{app}</dd>
<dt>{w_rule}</dt><dd><code>{rule}</code> ({category})</dd>
<dt>{w_request}</dt><dd><code>{target}</code></dd>
<dt>{w_reference}</dt><dd{reference_lang}>{reference}</dd>
</dl>
</main>
<section lang="{other}">
<h2>{other_heading}</h2>
<p{other_notice_lang}>{other_notice}</p>
<p>{other_w_reference}{other_colon} <span{other_reference_lang}>{other_reference}</span></p>
</section>
</body>
</html>
"""

_ERROR_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Blocked: policy check failed</title></head>
<body>
<h1>This request was refused</h1>
<p>The network policy could not be checked for <code>{target}</code>, so the request was refused rather than let
through. Please report this to your IT security team.</p>
<section lang="fr">
<h2>Cette requête a été refusée</h2>
<p>La politique du réseau n\u2019a pas pu être vérifiée pour <code>{target}</code>\u00a0; la requête a donc été refusée
plutôt que laissée passer. Veuillez le signaler à votre équipe de sécurité informatique.</p>
</section>
</body>
</html>
"""


_BAD_REQUEST_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Bad request</title></head>
<body>
<h1>Bad request</h1>
<p>The request names its server in a way that cannot be read one way only, so it was refused:
<code>{why}</code></p>
<section lang="fr">
<h2>Requête incorrecte</h2>
<p>La requête désigne son serveur d\u2019une manière qui peut se lire de plusieurs façons\u00a0; elle a donc été
refusée.</p>
</section>
</body>
</html>
"""


_TOO_LONG_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Request path too long</title></head>
<body>
<h1>Request path too long</h1>
<p>This server's requests are checked against the network's policy, which reads paths of up to {limit} characters;
this one is longer, so it was refused: <code>{why}</code></p>
<section lang="fr">
<h2>Chemin de requête trop long</h2>
<p>Les requêtes vers ce serveur sont vérifiées selon la politique du réseau, qui lit les chemins d\u2019au plus
{limit} caractères\u00a0; celui-ci est plus long, la requête a donc été refusée.</p>
</section>
</body>
</html>
"""


def render_path_too_long(why: str, limit: int) -> bytes:
    return _TOO_LONG_PAGE.format(why=html.escape(why), limit=limit).encode("utf-8")


_TARGET = "\x00target\x00"


def choose_language(accept_language: str | None) -> str:
    """``"en"`` or ``"fr"`` for an ``Accept-Language`` value (RFC 9110 section 12.5.4).

    The supported language with the highest q-value wins; among equal q-values, the one listed first. ``*`` stands
    for the default. A range with ``q=0`` (or an unreadable q) is never chosen. Only the first ``MAX_ACCEPT_LANGUAGE``
    characters and ``MAX_LANGUAGE_RANGES`` ranges are read: the header is client input.
    """
    if not accept_language:
        return DEFAULT_LANGUAGE
    best, best_q = DEFAULT_LANGUAGE, 0.0
    for item in accept_language[:MAX_ACCEPT_LANGUAGE].split(",")[:MAX_LANGUAGE_RANGES]:
        tag, *params = item.split(";")
        tag = tag.strip()
        q = 1.0
        for param in params:
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also NaN
                    q = 0.0
        lang = DEFAULT_LANGUAGE if tag == "*" else primary_tag(tag)
        if lang in LANGUAGES and q > best_q:
            best, best_q = lang, q
    return best


def _other(lang: str) -> str:
    return LANGUAGES[1] if lang == LANGUAGES[0] else LANGUAGES[0]


def _policy_text(app: AppPolicy, field: TextField, lang: str) -> tuple[str, str] | None:
    """(text, its language) of a policy field for ``lang``: the policy's own text in that language, else its English
    (or only) text tagged ``en``; None when the policy has no text at all."""
    if any(name == field and tag == lang for name, tag, _ in app.translations):
        return app.localized(field, lang), lang
    english = app.localized(field, "en")
    return (english, "en") if english else None


def _lang_attr(text_lang: str, page_lang: str) -> str:
    return "" if text_lang == page_lang else f' lang="{text_lang}"'


def _notice(app: AppPolicy, lang: str) -> tuple[str, str]:
    """The notice in ``lang`` when the policy gives it (English is the plain text), else the generic sentence."""
    found = _policy_text(app, "notice", lang)
    if found is not None and found[1] == lang:
        return found
    return _WORDS[lang]["notice"], lang


def _reference(app: AppPolicy, lang: str) -> tuple[str, str]:
    found = _policy_text(app, "reference", lang)
    return found if found is not None else (app.path, lang)  # no reference: the blocklist file names the source


@functools.lru_cache(maxsize=512)
def _halves(match: Match, lang: str) -> tuple[bytes, bytes]:
    """The page of one rule in one language, split around the request target (policy values escaped once)."""
    app = match.app
    e = html.escape
    other = _other(lang)
    title = e(app.name or app.app)
    notice, notice_lang = _notice(app, lang)
    reference, reference_lang = _reference(app, lang)
    other_notice, other_notice_lang = _notice(app, other)
    other_reference, other_reference_lang = _reference(app, other)
    words, other_words = _WORDS[lang], _WORDS[other]
    page = _PAGE.format(
        lang=lang,
        blocked=words["blocked"],
        colon=_COLON[lang],
        title=title,
        heading=words["heading"].format(title=title),
        notice=e(notice),
        notice_lang=_lang_attr(notice_lang, lang),
        w_application=words["application"],
        w_rule=words["rule"],
        w_request=words["request"],
        w_reference=words["reference"],
        app=e(f"{app.name} ({app.vendor})" if app.vendor else app.name or app.app),
        rule=e(match.rule.id),
        category=e(match.rule.category or "block"),
        target=_TARGET,
        reference=e(reference),
        reference_lang=_lang_attr(reference_lang, lang),
        other=other,
        other_heading=other_words["heading"].format(title=title),
        other_notice=e(other_notice),
        other_notice_lang=_lang_attr(other_notice_lang, other),
        other_w_reference=other_words["reference"],
        other_colon=_COLON[other],
        other_reference=e(other_reference),
        other_reference_lang=_lang_attr(other_reference_lang, other),
    )
    before, _, after = page.partition(_TARGET)
    return before.encode("utf-8"), after.encode("utf-8")


def render(match: Match, target: str = "", lang: str = DEFAULT_LANGUAGE) -> bytes:
    """The page for a blocking match (``target`` = the URL or host that was refused) in ``lang`` (``en``/``fr``)."""
    before, after = _halves(Match(match.rule, match.app), lang if lang in LANGUAGES else DEFAULT_LANGUAGE)
    return before + html.escape(target).encode("utf-8") + after


def render_error(target: str = "") -> bytes:
    return _ERROR_PAGE.format(target=html.escape(target)).encode("utf-8")


def render_bad_request(why: str) -> bytes:
    return _BAD_REQUEST_PAGE.format(why=html.escape(why)).encode("utf-8")


def headers(rule_id: str, lang: str = DEFAULT_LANGUAGE) -> dict[str, str]:
    # A rule id comes from a YAML file: keep it to printable ASCII so it can never split or break a header.
    safe = "".join(ch if " " <= ch <= "~" else "?" for ch in rule_id)
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Cache-Control": "no-store",
        "Content-Language": lang if lang in LANGUAGES else DEFAULT_LANGUAGE,
        "Vary": "Accept-Language",
        "X-Enforcer-Rule": safe,
    }
