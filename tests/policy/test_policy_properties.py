"""Hypothesis properties of names and matching: label boundaries, idempotent normalisation, case and trailing dot.

The default run keeps example counts moderate (``SHORT``, 40, where each example loads a policy: ~50 ms each);
``-m slow`` runs every property with many more examples.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enforcer.policy import InvalidName, Policy, load_policy, normalize_name
from enforcer.proxy.decide import url_for
from tests.policy.policy_helpers import app_yaml, shipped

LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
NAME = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
# Any text made of name characters, dots and a few non-ASCII letters: most of it is invalid, which is the point.
RAW = st.text(alphabet=st.sampled_from("abcXYZ019-_.éüß微信ＡＢ。"), min_size=0, max_size=30)

DEFAULT = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHORT = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


@SHORT
@given(rule=NAME, prefix=st.one_of(st.just(""), NAME, LABEL), joiner=st.sampled_from([".", "", "-"]))
def test_suffix_never_matches_across_a_label_boundary(rule: str, prefix: str, joiner: str) -> None:
    _label_boundary(rule, prefix, joiner)


@SHORT
@given(rule=NAME, query=NAME)
def test_suffix_matches_exactly_the_names_ending_in_its_labels(rule: str, query: str) -> None:
    m = _policy_with(rule).match_name(query)
    expected = query == rule or query.endswith("." + rule)
    assert (m is not None) == expected


@SHORT
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


@pytest.mark.slow
@SLOW
@given(rule=NAME, query=NAME)
def test_suffix_matches_exactly_slow(rule: str, query: str) -> None:
    test_suffix_matches_exactly_the_names_ending_in_its_labels.hypothesis.inner_test(rule, query)  # type: ignore[attr-defined]


@pytest.mark.slow
@SLOW
@given(rule=NAME, query=NAME)
def test_host_rule_matches_only_its_name_slow(rule: str, query: str) -> None:
    test_host_rule_matches_only_its_name.hypothesis.inner_test(rule, query)  # type: ignore[attr-defined]


# -- hostile spellings (issue 10): what the origin or the resolver reads is what is judged ---------------------------
def _obfuscate(path: str, draw: st.DrawFn) -> str:
    """Spell ``path`` another way that a normalising origin (nginx, IIS) reads back as ``path``."""
    out = []
    for seg in path.split("/")[1:]:
        for _ in range(draw(st.integers(0, 2))):
            out.append(draw(st.sampled_from(["", ".", "%2e", "x/..", "y/%2e%2e", "z;p=1/.."])))
        chars = []
        for ch in seg:
            how = draw(st.sampled_from(["keep", "keep", "upper", "escape"]))
            chars.append(ch.upper() if how == "upper" else f"%{ord(ch):02x}" if how == "escape" else ch)
        out.append("".join(chars))
    seps = [draw(st.sampled_from(["/", "/", "//", "\\", "%2F", "/./"])) for _ in out]
    return "".join(sep + seg for sep, seg in zip(seps, out, strict=True))


@st.composite
def _spelled_path(draw: st.DrawFn, base: str) -> str:
    name = draw(st.from_regex(r"[a-z0-9_]{1,8}\.(apk|exe|dmg)", fullmatch=True))
    return _obfuscate(f"{base}{name}", draw)


@SHORT
@given(blocked=_spelled_path("/weixin/android/"), other=_spelled_path("/qqfile/qq/"))
def test_every_spelling_of_a_blocked_path_is_blocked(blocked: str, other: str) -> None:
    # As the proxy builds the URL from a request's path (a leading backslash stays in the path, after a "/").
    policy = shipped()
    m = policy.match_url(url_for("https", "dldir1.qq.com", 443, blocked))
    assert m is not None and m.rule.id == "wechat:url:dldir1.qq.com/weixin/*", blocked
    assert policy.match_url(url_for("https", "dldir1.qq.com", 443, other)) is None, other


def _spell_ipv4(value: int, draw: st.DrawFn) -> str:
    nparts = draw(st.integers(1, 4))
    sizes = [8] * (nparts - 1) + [32 - 8 * (nparts - 1)]
    parts, shift = [], 32
    for size in sizes:
        shift -= size
        parts.append((value >> shift) & ((1 << size) - 1))
    styles: list[Callable[[int], str]] = [str, hex, lambda v: "0" + oct(v)[2:]]
    return ".".join(draw(st.sampled_from(styles))(p) for p in parts)


@st.composite
def _spelled_ip(draw: st.DrawFn, low: int, high: int) -> str:
    return _spell_ipv4(draw(st.integers(low, high)), draw)


KASPERSKY_21 = (0x4D4AB000, 0x4D4AB7FF)  # 77.74.176.0/21


@DEFAULT
@given(spelled=_spelled_ip(*KASPERSKY_21), outside=_spelled_ip(0x08080000, 0x0808FFFF))
def test_every_spelling_of_a_blocked_address_is_blocked(spelled: str, outside: str) -> None:
    policy = shipped()
    m = policy.match_host(spelled)
    assert m is not None and m.rule.id == "kaspersky:cidr:77.74.176.0/21", spelled
    assert policy.match_host(outside) is None, outside


@pytest.mark.slow
@SLOW
@given(blocked=_spelled_path("/weixin/android/"), other=_spelled_path("/qqfile/qq/"))
def test_every_spelling_of_a_blocked_path_slow(blocked: str, other: str) -> None:
    test_every_spelling_of_a_blocked_path_is_blocked.hypothesis.inner_test(blocked, other)  # type: ignore[attr-defined]
