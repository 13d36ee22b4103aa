"""The block page: a small self-contained HTML document and the headers of the 403 that carries it.

Every value from the policy or the request goes through ``html.escape``: blocklists and URLs are input, not markup.
``render`` is pure (bytes; the policy part of a rule's page is escaped once and cached);
``headers`` gives the response headers; ``ERROR_RULE`` stands for "refused because the
addon could not decide" (fail closed); ``render_bad_request`` is the 400 page for a request whose Host can be read
two ways (``BAD_REQUEST_RULE``).
"""

from __future__ import annotations

import functools
import html

from enforcer.policy import Match

STATUS = 403
ERROR_RULE = "enforcer:error"
BAD_REQUEST_RULE = "enforcer:bad-host"

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Blocked: {title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:44em;margin:3em auto;padding:0 1em;color:#222}}
h1{{font-size:1.4em}} dt{{font-weight:bold;margin-top:.8em}} code{{background:#f3f3f3;padding:0 .2em}}</style>
</head>
<body>
<h1>{title} is blocked on this network</h1>
<p>{notice}</p>
<dl>
<dt>Application</dt><dd>{app}</dd>
<dt>Rule</dt><dd><code>{rule}</code> ({category})</dd>
<dt>Request</dt><dd><code>{target}</code></dd>
<dt>Reference</dt><dd>{reference}</dd>
</dl>
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
</body>
</html>
"""


_TARGET = "\x00target\x00"


@functools.lru_cache(maxsize=256)
def _halves(match: Match) -> tuple[bytes, bytes]:
    """The page of one rule split around the request target (policy values are escaped once per rule)."""
    app = match.app
    e = html.escape
    page = _PAGE.format(
        title=e(app.name or app.app),
        notice=e(app.notice or "This connection was blocked by network policy."),
        app=e(f"{app.name} ({app.vendor})" if app.vendor else app.name or app.app),
        rule=e(match.rule.id),
        category=e(match.rule.category or "block"),
        target=_TARGET,
        reference=e(app.reference or app.path),
    )
    before, _, after = page.partition(_TARGET)
    return before.encode("utf-8"), after.encode("utf-8")


def render(match: Match, target: str = "") -> bytes:
    """The page for a blocking match (``target`` = the URL or host that was refused)."""
    before, after = _halves(Match(match.rule, match.app))
    return before + html.escape(target).encode("utf-8") + after


def render_error(target: str = "") -> bytes:
    return _ERROR_PAGE.format(target=html.escape(target)).encode("utf-8")


def render_bad_request(why: str) -> bytes:
    return _BAD_REQUEST_PAGE.format(why=html.escape(why)).encode("utf-8")


def headers(rule_id: str) -> dict[str, str]:
    # A rule id comes from a YAML file: keep it to printable ASCII so it can never split or break a header.
    safe = "".join(ch if " " <= ch <= "~" else "?" for ch in rule_id)
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Cache-Control": "no-store",
        "X-Enforcer-Rule": safe,
    }
