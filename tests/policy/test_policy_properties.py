"""Hypothesis properties of names and matching: label boundaries, idempotent normalisation, case and trailing dot.

The default run keeps example counts moderate; ``-m slow`` runs the same properties with many more examples.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcer.policy import InvalidName, Policy, load_policy, normalize_name
from tests.policy.policy_helpers import app_yaml, shipped

LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
NAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
# Any text made of name characters, dots and a few non-ASCII letters: most of it is invalid, which is the point.
RAW = st.text(alphabet=st.sampled_from("abcXYZ019-_.éüß微信ＡＢ。"), min_size=0, max_size=30)

DEFAULT = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _policy_with(rule_name: str, kind: str = "domain") -> Policy:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.yaml"
        p.write_text(app_yaml("t", f"block:\n  - {kind}: {rule_name}\n    category: web\n"))
        return load_policy(p)


def _label_boundary(rule: str, prefix: str, joiner: str) -> None:
    policy = _policy_with(rule)
    query = prefix + joiner + rule if prefix else rule
    m = policy.match_name(query)
    if joiner == "." or not prefix:
        assert m is not None and m.matched == rule
    else:
        # "my" + "wechat.com": the rule's first label would be cut in the middle, never a match.
        assert m is None, (rule, query)


@DEFAULT
@given(rule=NAME, prefix=st.one_of(st.just(""), NAME, LABEL), joiner=st.sampled_from([".", "", "-"]))
def test_suffix_never_matches_across_a_label_boundary(rule: str, prefix: str, joiner: str) -> None:
    _label_boundary(rule, prefix, joiner)


@DEFAULT
@given(rule=NAME, query=NAME)
def test_suffix_matches_exactly_the_names_ending_in_its_labels(rule: str, query: str) -> None:
    m = _policy_with(rule).match_name(query)
    expected = query == rule or query.endswith("." + rule)
    assert (m is not None) == expected


@DEFAULT
@given(rule=NAME, query=NAME)
def test_host_rule_matches_only_its_name(rule: str, query: str) -> None:
    m = _policy_with(rule, "host").match_name(query)
    assert (m is not None) == (query == rule)


@DEFAULT
@given(raw=RAW)
def test_normalize_name_is_idempotent(raw: str) -> None:
    try:
        once = normalize_name(raw)
    except InvalidName:
        return
    assert normalize_name(once) == once
    assert once == once.lower() and not once.endswith(".") and once.isascii()


def _flip_ascii_case(name: str, mask: list[bool]) -> str:
    return "".join(ch.upper() if ch.isascii() and up else ch for ch, up in zip(name, mask * len(name), strict=False))


SHIPPED_NAMES = sorted({n for n, _r, _e in shipped().name_entries()})


@DEFAULT
@given(
    base=st.one_of(st.sampled_from(SHIPPED_NAMES), NAME),
    prefix=st.one_of(st.just(""), LABEL.map(lambda x: x + "."), LABEL),
    mask=st.lists(st.booleans(), min_size=1, max_size=8),
    dot=st.booleans(),
)
def test_case_and_trailing_dot_never_change_a_verdict(base: str, prefix: str, mask: list[bool], dot: bool) -> None:
    policy = shipped()
    name = prefix + base
    variant = _flip_ascii_case(name, mask) + ("." if dot else "")
    a, b = policy.match_name(name), policy.match_name(variant)
    assert (a and (a.verdict, a.rule.id)) == (b and (b.verdict, b.rule.id))
    # The DNS hot path agrees with match_name.
    rule = policy.match_key(name)
    assert (rule and rule.id) == (a and a.rule.id)


@pytest.mark.slow
@SLOW
@given(rule=NAME, prefix=st.one_of(st.just(""), NAME, LABEL), joiner=st.sampled_from([".", "", "-"]))
def test_label_boundary_slow(rule: str, prefix: str, joiner: str) -> None:
    _label_boundary(rule, prefix, joiner)


@pytest.mark.slow
@SLOW
@given(raw=RAW)
def test_normalize_idempotent_slow(raw: str) -> None:
    test_normalize_name_is_idempotent.hypothesis.inner_test(raw)  # type: ignore[attr-defined]
