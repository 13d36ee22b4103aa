"""``policy.notice`` / ``policy.reference`` per language (issue 13): a plain string as before, or a map from a BCP 47
primary language tag to text; ``AppPolicy.localized`` picks one, falling back to English, then to the only text."""

from __future__ import annotations

from pathlib import Path

import pytest

from enforcer.policy import PolicyError, load_policy
from enforcer.policy.model import AppPolicy, primary_tag
from tests.policy.policy_helpers import write

BODY = """\
block:
  - domain: blocked.test
    category: messaging
"""


def _policy_file(tmp_path: Path, policy_extra: str) -> Path:
    text = "app: t\npolicy:\n  effective: 2023-10-30\n" + policy_extra + BODY
    return write(tmp_path, "t.yaml", text)


def _app(tmp_path: Path, policy_extra: str) -> AppPolicy:
    return load_policy(_policy_file(tmp_path, policy_extra)).apps["t"]


def test_a_plain_string_stays_the_text_in_every_language(tmp_path: Path) -> None:
    app = _app(tmp_path, '  notice: "Ask IT."\n  reference: "Directive 42"\n')
    assert app.notice == "Ask IT." and app.reference == "Directive 42"
    assert app.translations == ()
    assert app.localized("notice", "fr") == "Ask IT."
    assert app.localized("reference", "en-CA") == "Directive 42"


def test_a_map_by_language_is_picked_by_primary_tag_with_english_fallback(tmp_path: Path) -> None:
    app = _app(
        tmp_path,
        '  notice:\n    fr: "Bloqué."\n    en: "Blocked."\n  reference:\n    EN: "Directive"\n',
    )
    assert app.notice == "Blocked."  # English, whatever the order in the file
    assert app.localized("notice", "fr") == "Bloqué."
    assert app.localized("notice", "fr-CA") == "Bloqué."
    assert app.localized("notice", "FR_ca") == "Bloqué."
    assert app.localized("notice", "de") == "Blocked."
    assert app.localized("notice", "") == "Blocked."
    assert app.localized("reference", "fr") == "Directive"  # keys are case-insensitive; fr not given -> en
    assert app.reference == "Directive"


def test_a_map_without_english_uses_its_first_text_as_the_plain_value(tmp_path: Path) -> None:
    app = _app(tmp_path, '  notice:\n    fr: "Bloqué."\n    es: "Bloqueado."\n')
    assert app.notice == "Bloqué."
    assert app.localized("notice", "es-MX") == "Bloqueado."
    assert app.localized("notice", "en") == "Bloqué."
    assert app.localized("reference", "fr") == ""


def test_norwegian_no_is_a_language_not_a_boolean(tmp_path: Path) -> None:
    app = _app(tmp_path, "  notice:\n    en: Blocked.\n    no: Blokkert.\n")
    assert app.localized("notice", "no") == "Blokkert."
    assert app.localized("notice", "nb-NO") == "Blocked."


@pytest.mark.parametrize(
    ("extra", "line", "col", "message"),
    [
        (
            "  notice:\n    en-CA: x\n",
            5,
            5,
            "'en-CA' is not a BCP 47 primary language tag such as en (use the primary tag 'en')",
        ),
        ("  notice:\n    1: x\n", 5, 5, "'1' is not a BCP 47 primary language tag"),
        ("  notice:\n    [en]: x\n", 5, 5, "a non-text key is not a BCP 47 primary language tag"),
        ("  notice:\n    english: x\n", 5, 5, "'english' is not a BCP 47 primary language tag"),
        ("  notice:\n    en: [a, b]\n", 5, 9, "'policy.notice.en' must be text"),
        ("  notice:\n    en: 42\n", 5, 9, "'policy.notice.en' must be text (quote a number or yes/no)"),
        ('  notice:\n    en: ""\n', 5, 9, "'policy.notice.en' must not be empty"),
        ("  notice:\n    en: a\n    EN: b\n", 6, 5, "duplicate language 'en' in 'policy.notice'"),
        ("  reference: {}\n", 4, 14, "'policy.reference' must be text or a map by language"),
        ("  reference: [a]\n", 4, 14, "'policy.reference' must be a single value"),
    ],
)
def test_bad_language_maps_are_located_errors(tmp_path: Path, extra: str, line: int, col: int, message: str) -> None:
    path = _policy_file(tmp_path, extra)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    shown = [str(p) for p in err.value.problems if p.severity == "error"]
    assert any(s.startswith(f"{path}:{line}:{col}: ") and message in s for s in shown), shown


@pytest.mark.parametrize(
    ("tag", "primary"),
    [("fr", "fr"), ("fr-CA", "fr"), ("FR_ca", "fr"), ("yue-HK", "yue"), ("", ""), ("*", ""), ("x-klingon", "")],
)
def test_primary_tag(tag: str, primary: str) -> None:
    assert primary_tag(tag) == primary
