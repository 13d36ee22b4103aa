"""The dashboard in English and French: language negotiation (q-values, ``?lang=``), the rendered page (``lang``
attribute, texts, the switch, the script's texts as an inert JSON block), and the policy notice per language."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from enforcer.analyst.i18n import MESSAGES, negotiate
from enforcer.analyst.web import build_app
from tests.analyst.analyst_helpers import local_analyst

TOKEN = "tok-i18n-3c9d1e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("query", "header", "want"),
    [
        (None, None, "en"),
        (None, "fr-CA,fr;q=0.9,en;q=0.8", "fr"),
        (None, "en-CA,en;q=0.9,fr;q=0.8", "en"),
        (None, "de-DE,de;q=0.9,fr;q=0.5,en;q=0.4", "fr"),  # the best supported one, not the first
        (None, "en;q=0.2, fr;q=0.7", "fr"),  # q-values, not order
        (None, "fr;q=0, en;q=0.1", "en"),  # q=0: not acceptable
        (None, "fr;q=0.5, en;q=0.5", "fr"),  # a tie keeps the header's order
        (None, "de, *;q=0.1", "en"),
        (None, "fr;q=abc, en;q=0.3", "en"),  # a malformed q-value counts as 0
        ("fr", "en", "fr"),  # ?lang= wins
        ("fr-CA", None, "fr"),
        ("xx", "fr", "fr"),  # an unsupported ?lang= is ignored
    ],
)
def test_negotiate(query: str | None, header: str | None, want: str) -> None:
    assert negotiate(query, header) == want


def test_every_text_in_both_languages() -> None:
    for key, texts in MESSAGES.items():
        assert set(texts) == {"en", "fr"} and all(texts.values()), key
        # Canadian French typography: a no-break space before a colon, never a plain space.
        assert " :" not in texts["fr"], key
        # Placeholders the script fills are the same in both languages.
        assert set(re.findall(r"\{\w+\}", texts["en"])) == set(re.findall(r"\{\w+\}", texts["fr"])), key


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Any:
    analyst = local_analyst(tmp_path, [str(tmp_path / "none")], token=TOKEN, retention=90 * 86400.0)
    cl = await aiohttp_client(build_app(analyst))
    yield cl
    analyst.close()


def _script_texts(page: str) -> dict[str, str]:
    m = re.search(r'<script id="i18n" type="application/json">(.*?)</script>', page, re.S)
    assert m is not None
    assert "<" not in m.group(1)  # no text can close the block
    return dict(json.loads(m.group(1)))


async def test_page_in_french_and_english(client: Any) -> None:
    resp = await client.get("/", headers={**AUTH, "Accept-Language": "fr-CA,fr;q=0.9,en;q=0.5"})
    assert resp.status == 200 and resp.headers["Content-Language"] == "fr"
    assert "Accept-Language" in resp.headers["Vary"]
    page = await resp.text()
    assert '<html lang="fr">' in page
    assert "<h1>Examen de la conformité</h1>" in page and "Appareils non conformes" in page
    assert 'href="?lang=en" lang="en" hreflang="en">English</a>' in page  # the switch names the other language
    assert "{{" not in page
    assert _script_texts(page)["state_remediated"] == "corrigé"

    resp = await client.get("/?lang=en", headers={**AUTH, "Accept-Language": "fr"})
    page = await resp.text()
    assert '<html lang="en">' in page and "<h1>Compliance review</h1>" in page
    assert 'href="?lang=fr" lang="fr" hreflang="fr">Français</a>' in page
    assert _script_texts(page)["state_remediated"] == "remediated"

    # The login shell (no token) is in the asked language too.
    resp = await client.get("/", headers={"Accept-Language": "fr"})
    assert resp.status == 401 and '<html lang="fr">' in await resp.text()


async def test_policy_notice_and_retention_per_language(client: Any) -> None:
    fr = await (await client.get("/api/dashboard", params={"lang": "fr"}, headers=AUTH)).json()
    en = await (await client.get("/api/dashboard", headers={**AUTH, "Accept-Language": "en-CA"})).json()
    assert (fr["lang"], en["lang"]) == ("fr", "en")
    notice = {p["app"]: p["notice"] for p in fr["policy"]}
    assert notice["controls"].startswith("Cette connexion a été bloquée")
    assert {p["app"]: p["notice"] for p in en["policy"]}["controls"].startswith("This connection was blocked")
    # An app whose notice is a plain string has that text in both languages.
    assert notice["wechat"] == {p["app"]: p["notice"] for p in en["policy"]}["wechat"] != ""
    assert fr["retention_seconds"] == 90 * 86400
