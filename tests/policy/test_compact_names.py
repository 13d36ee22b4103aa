"""The compact feed-name table (enforcer/policy/nameindex.py), the policy built on it, and the batch feed parser
(``feeds.feed_names_text``) that hands it a feed as one string.

The policy keeps feeds below ``COMPACT_MIN_NAMES`` in its dict, so these tests lower the threshold to put small
feeds in the compact table, and compare every answer with the same policy built on the dict.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from enforcer.policy import feeds, load_policy, matcher
from enforcer.policy.lint import public_feed_names
from enforcer.policy.matcher import Policy
from enforcer.policy.model import Match, Problem, Rule
from enforcer.policy.nameindex import NameIndex, iter_names, names_digest, text_spans
from enforcer.policy.names import _ASCII_NAME_RE, MAX_NAME


def _rule(n: int) -> Rule:
    return Rule(f"feed{n}", "bench", "block", "include", f"feed{n}.txt", "web", f"x.yaml:{n}", None, None)


def test_index_finds_exactly_the_names_it_holds() -> None:
    index = NameIndex()
    a, b = _rule(1), _rule(2)
    assert index.add("one.example\ntwo.example\none.example\n", a) == 1  # the repeat is counted, not stored twice
    assert index.add("two.example\nthree.example", b) == 1  # no final newline: the last name still counts
    assert len(index) == 3
    assert index.get("one.example") is a
    assert index.get("two.example") is a  # the first feed to list a name keeps it
    assert index.get("three.example") is b
    for miss in ("example", "ne.example", "one.exampl", "one.example.", "x.one.example", "", "three.exampl"):
        assert index.get(miss) is None, miss
    assert list(index.items()) == [("one.example", a), ("two.example", a), ("three.example", b)]
    assert not index.single_label
    index.add("lan\n", a)
    assert index.single_label


def test_index_grows_and_keeps_every_name() -> None:
    index = NameIndex()
    rules = [_rule(i) for i in range(30)]
    expected: dict[str, Rule] = {}
    rng = random.Random(7)
    for rule in rules:  # many feeds one after the other: the table is rebuilt bigger several times
        names = [f"h{rng.randrange(40_000)}.f{rng.randrange(9)}.example" for _ in range(2_000)]
        for name in names:
            expected.setdefault(name, rule)
        index.add("".join(f"{n}\n" for n in names), rule)
    assert len(index) == len(expected)
    assert all(index.get(name) is rule for name, rule in expected.items())
    assert sum(1 for _ in index.items()) == len(expected)
    assert index.get("h1.f1.example.org") is None


def test_a_colliding_tag_never_matches_another_name() -> None:
    # Plant, in the slot where an unlisted name's probe starts, an entry with that name's own tag but pointing at a
    # listed name: exactly what a 64-bit hash collision would look like. The text comparison must refuse it.
    index = NameIndex()
    rule = _rule(1)
    index.add("listed.example\n", rule)
    probe = "not-listed.example"
    h = hash(probe)
    slot = h % index._size
    while index._table[slot]:  # keep the real entry where it is
        slot = (slot + 1) % index._size
    index._table[slot] = ((h >> 32) | 1) << 32 | 0  # the probe's own tag, at the offset of "listed.example"
    assert index.get(probe) is None
    assert index.get("listed.example") is rule


def test_batches_cover_the_text_once() -> None:
    text = "".join(f"name{i}.example\n" for i in range(100_000))
    spans = list(text_spans(text))
    assert len(spans) > 3
    assert "".join(text[s : e + 1] for s, e in spans) == text
    names = [n for _, batch in iter_names(text) for n in batch]
    assert names == text.splitlines()
    import hashlib

    assert names_digest(text) == hashlib.sha256("\n".join(names).encode()).hexdigest()


def _policy_dir(tmp_path: Path, rng: random.Random) -> Path:
    """A blocklist with two feeds and domain rules before and after them, some naming the same names."""
    names = [f"{rng.choice('abcdefgh')}{i}.{rng.choice(['ex', 'ads', 'trk'])}.{rng.choice(['com', 'net', 'cn'])}"
             for i in range(3_000)]  # fmt: skip
    feed1, feed2 = names[:2_000], [*names[1_500:], "shared.example"]
    (tmp_path / "f1.txt").write_text("# feed one\n" + "\n".join(feed1) + "\n")
    (tmp_path / "f2.txt").write_text("\n".join(feed2))
    (tmp_path / "a.yaml").write_text(
        "app: compact\npolicy:\n  effective: 2023-10-30\nblock:\n"
        f"  - domain: {feed1[10]}\n    category: web\n"  # before the feed that lists it: the domain rule keeps it
        "  - include: f1.txt\n    category: web\n"
        "  - include: f2.txt\n    category: telemetry\n"
        f"  - domain: {feed2[3]}\n    category: messaging\n"  # after: a repeat of the feed's listing
        "  - domain: trk.net\n    category: web\n"
        f"allow:\n  - domain: x.{feed1[20]}\n  - domain: {feed1[30]}\n  - domain: shared.example\n"
    )
    return tmp_path


@pytest.mark.parametrize("seed", [1, 2])
def test_compact_policy_answers_as_the_dict_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    rng = random.Random(seed)
    folder = _policy_dir(tmp_path, rng)
    as_dict = load_policy(folder)
    monkeypatch.setattr(matcher, "COMPACT_MIN_NAMES", 0)
    compact = load_policy(folder)
    assert compact._feeds is not None and as_dict._feeds is None
    assert compact.stats() == as_dict.stats()
    assert [str(w) for w in compact.warnings] == [str(w) for w in as_dict.warnings]
    entries = sorted((n, r.id, e) for n, r, e in compact.name_entries())
    assert entries == sorted((n, r.id, e) for n, r, e in as_dict.name_entries())
    queries = [n for n, _r, _e in as_dict.name_entries()]
    queries += [f"{rng.choice(['www.', 'a.b.', ''])}{q}" for q in queries[:2_000]]
    queries += [q[1:] for q in queries[:500]] + ["x." + q for q in queries[:500]] + ["com", "cn", "qq.com"]
    for q in queries:
        want, got = as_dict.match_name(q), compact.match_name(q)
        assert (got and (got.rule.id, got.matched)) == (want and (want.rule.id, want.matched)), q
        assert compact.match_key(q) == as_dict.match_key(q), q


def test_policy_stays_compact_only_above_the_threshold(tmp_path: Path) -> None:
    folder = _policy_dir(tmp_path, random.Random(3))
    policy = load_policy(folder)
    assert isinstance(policy, Policy) and policy._feeds is None  # 3,000 names: the dict


def _line_by_line(text: str, problems: list[Problem]) -> list[str] | None:
    """The feed parser's definition, one line at a time (what feed_names_text must equal, batch checks or not)."""
    errors = feeds._Errors("f", problems)
    names: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if len(line) <= MAX_NAME and _ASCII_NAME_RE.fullmatch(line) and "xn--" not in line:
            names.append(line)
        else:
            names.extend(feeds._slow_line(line, lineno, errors))
    errors.close()
    if errors.count:
        return None
    for name in public_feed_names(names):
        lineno, col = next(
            ((i, ln.find(name) + 1) for i, ln in enumerate(text.splitlines(), 1) if name in ln.split()), (1, 1)
        )
        problems.append(Problem("f", lineno, col, "public", "warning"))
    return names


_BIG = "".join(f"n{i}.ex{i % 97}.com\n" for i in range(60_000))  # several batches


def _reads_line_by_line(text: str) -> None:
    """The batch reading of a feed (``feeds.feed_names_text``, ``feeds.parse_feed``) gives the names and problems of
    the line-by-line reading."""
    want_problems: list[Problem] = []
    got_problems: list[Problem] = []
    want = _line_by_line(text, want_problems)
    got = feeds.feed_names_text(text, "f", got_problems)
    assert got == (None if want is None else "".join(f"{n}\n" for n in want))
    assert [(p.line, p.col, p.severity) for p in got_problems] == [(p.line, p.col, p.severity) for p in want_problems]
    assert feeds.parse_feed(text, "f", []) == want


@pytest.mark.parametrize(
    "text",
    [
        "", "\n", "a.com", "a.com\n", "a.com\nb.org\n", "a.com\n\n\nb.com", "a..com\n", "-a.com\n", "a-.com\n",
        "# c\na.com\r\nB.ORG\n0.0.0.0 x.com y.net localhost\n\ncom\nco.uk\n", "a.com\nbad name here\n",
        "xn--bcher-kva.example\n", "x" * 64 + ".com\n", "a" * 60 + "." + "b" * 63 + ".com\n", "a.com\rb.com\n",
        "foo.kawasaki.jp\ncom\nx.com\ncom\n", "münchen.de\n", "a.com\x85b.com\n", "_dmarc.a.com\n",
        _BIG, _BIG[:-1], _BIG + "# tail\nCOM\n", "# head\n" + _BIG, _BIG[:300_000] + "bad line\n" + _BIG[300_000:],
        _BIG[:400_000] + "lan\n" + "y" * 70 + ".net\n" + _BIG[400_000:],
    ],
)  # fmt: skip
def test_feed_text_is_the_line_by_line_reading(text: str) -> None:
    _reads_line_by_line(text)


def test_walker_answers_as_a_probe_per_suffix() -> None:
    # The policy's one-call walk (NameIndex.walker) against the per-suffix probe it replaced (after()), with domain
    # rules that win at their own name, a single-label feed name (tld_rules) and names that share no suffix.
    index = NameIndex()
    a, b, explicit = _rule(1), _rule(2), _rule(3)
    index.add("ads.example\nt.cdn.example\nlan\nx.y.z.example\n", a)
    index.add("cdn.example\nads.example\n", b)
    domains = {"t.cdn.example": explicit, "other.test": explicit}
    assert index.single_label
    probe = index.after(domains.get)
    queries = ["ads.example", "a.ads.example", "t.cdn.example", "u.t.cdn.example", "q.cdn.example", "example",
               "lan", "host.lan", "y.z.example", "w.x.y.z.example", "other.test", "a.other.test", "test",
               "", "."]  # fmt: skip
    for tld_rules in (True, False):
        walk = index.walker(domains.get, tld_rules)
        for q in queries:
            want = None
            i = -1
            while True:  # the matcher's loop over suffixes, longest first
                name = q[i + 1 :]
                if not tld_rules and "." not in name and name != q:
                    break
                rule = probe(name)
                if rule is not None:
                    want = (rule, name)
                    break
                i = q.find(".", i + 1)
                if i < 0:
                    break
            assert walk(q) == want, (q, tld_rules)
    walk = index.walker(domains.get, True)
    assert walk("host.lan") == (a, "lan")
    assert walk("u.t.cdn.example") == (explicit, "t.cdn.example")  # the domain rule wins at its own name
    assert walk("q.cdn.example") == (b, "cdn.example")  # listed by the second feed only
    assert index.walker(domains.get, False)("host.lan") is None  # without tld_rules a last label is never tried


def test_a_colliding_tag_never_matches_in_the_walk() -> None:
    index = NameIndex()
    rule = _rule(1)
    index.add("listed.example\n", rule)
    probe = "not-listed.example"
    h = hash(probe)
    slot = h % index._size
    while index._table[slot]:
        slot = (slot + 1) % index._size
    index._table[slot] = ((h >> 32) | 1) << 32 | 0  # the probe's own tag, at the offset of "listed.example"
    none: dict[str, Rule] = {}
    walk = index.walker(none.get, False)
    assert walk(probe) is None and walk("a." + probe) is None
    assert walk("a.listed.example") == (rule, "listed.example")


def test_empty_index_walks_to_none() -> None:
    none: dict[str, Rule] = {}
    assert NameIndex().walker(none.get, True)("a.b.example") is None
    assert NameIndex().walker({"b.example": _rule(1)}.get, False)("a.b.example") == (_rule(1), "b.example")


@pytest.mark.parametrize("compact", [False, True])
def test_match_name_returns_whole_match_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compact: bool) -> None:
    # match_name builds its Match from a ready tuple (matcher._match): on every path (exact host, the one-call walk
    # of a compact feed, the dict's walk) the answer must be a real Match, equal to the one the constructor builds,
    # whatever the case of the query and with or without its final dot.
    (tmp_path / "f.txt").write_text("ads.example\ntrk.example.net\n")
    (tmp_path / "a.yaml").write_text(
        "app: compact\npolicy:\n  effective: 2023-10-30\nblock:\n"
        "  - host: exact.example.org\n    category: telemetry\n"
        "  - domain: chat.example.org\n    category: messaging\n"
        "  - include: f.txt\n    category: web\n"
        "allow:\n  - domain: ok.ads.example\n"
    )
    if compact:
        monkeypatch.setattr(matcher, "COMPACT_MIN_NAMES", 0)
    policy = load_policy(tmp_path)
    assert (policy._feeds is not None) is compact
    rules = {r.kind + ":" + r.value: r for r in policy.rules}
    app = policy.apps["compact"]
    cases = {
        "Exact.Example.ORG.": Match(rules["host:exact.example.org"], app, "exact.example.org"),
        "a.chat.example.org": Match(rules["domain:chat.example.org"], app, "chat.example.org"),
        "WWW.ADS.EXAMPLE.": Match(rules["include:f.txt"], app, "ads.example"),
        "x.ok.ads.example": Match(rules["domain:ok.ads.example"], app, "ok.ads.example"),
        "trk.example.net": Match(rules["include:f.txt"], app, "trk.example.net"),
    }
    for query, want in cases.items():
        got = policy.match_name(query)
        assert type(got) is Match and got == want, query
        assert got.blocked == (want.rule.action == "block") and got.category == want.rule.category
        assert got._asdict() == {"rule": want.rule, "app": app, "matched": want.matched}
    for miss in ("x.example.org", "example.net", "other.test.", "", "."):
        assert policy.match_name(miss) is None, miss


def test_one_feed_walk_answers_as_a_probe_per_suffix() -> None:
    # One feed takes NameIndex._walker_one (the text compared inline); it must answer as the per-suffix probe, and a
    # planted tag that points at a listed line of which the probe is only a prefix must not match.
    index = NameIndex()
    rule, explicit = _rule(1), _rule(2)
    index.add("ads.example\nt.cdn.example\nabc.example.net\nlast.example", rule)  # no final newline on purpose
    domains = {"t.cdn.example": explicit}
    walk, probe = index.walker(domains.get, False), index.after(domains.get)
    assert walk.__qualname__.startswith("NameIndex._walker_one")
    queries = ["ads.example", "x.ads.example", "ads.exampl", "u.t.cdn.example", "cdn.example", "abc.example",
               "abc.example.net", "q.abc.example.net", "last.example", "a.last.example", "last.exampl", "",
               "."]  # fmt: skip
    for q in queries:
        want = None
        name, i = q, q.find(".")
        while True:
            found = probe(name)
            if found is not None:
                want = (found, name)
                break
            if i < 0 or "." not in q[i + 1 :]:
                break
            name, i = q[i + 1 :], q.find(".", i + 1)
        assert walk(q) == want, q
    h = hash("abc.example")
    slot = h % index._size
    while index._table[slot]:
        slot = (slot + 1) % index._size
    at = index._texts[0].index("abc.example.net")
    index._table[slot] = ((h >> 32) | 1) << 32 | at  # the tag of "abc.example", at the line "abc.example.net"
    assert index.walker(domains.get, False)("abc.example") is None
    assert index.walker(domains.get, False)("q.abc.example.net") == (rule, "abc.example.net")


@pytest.mark.parametrize("tld", [False, True])
def test_fused_one_feed_lookups_answer_as_the_methods(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tld: bool
) -> None:
    # One compact feed: Policy.match_name / match_key are NameIndex.lookups' closures (the walk inlined). They must
    # answer as the methods they replace (Policy.match_name(policy, q): hosts, then per suffix the domain rules before
    # the feed, over NameIndex.walker) and as the dict policy, on hosts, domain rules (block and allow) at names the
    # feed lists and below them, a single-label rule or none, any case, a final dot, an IDN.
    rng = random.Random(5)
    names = [f"{rng.choice('abcdef')}{i}.{rng.choice(['ex', 'ads'])}.{rng.choice(['com', 'net', 'cn'])}"
             for i in range(2_000)]  # fmt: skip
    names += ["ads.example", "t.cdn.example", "xn--bcher-kva.example"]
    (tmp_path / "f.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "a.yaml").write_text(
        "app: compact\npolicy:\n  effective: 2023-10-30\nblock:\n"
        f"  - host: {names[5]}\n    category: telemetry\n"  # a host rule at a name the feed lists
        "  - host: exact.example.org\n    category: telemetry\n"
        f"  - domain: {names[7]}\n    category: messaging\n"  # the domain rule decides the feed's own name
        "  - domain: cdn.example\n    category: messaging\n"  # a domain rule above a feed name
        "  - include: f.txt\n    category: web\n"
        + ("  - domain: lan\n    category: web\n" if tld else "")
        + f"allow:\n  - domain: ok.ads.example\n  - domain: x.{names[9]}\n"
    )
    as_dict = load_policy(tmp_path)
    monkeypatch.setattr(matcher, "COMPACT_MIN_NAMES", 0)
    policy = load_policy(tmp_path)
    assert policy._feeds is not None and policy._tld_rules is tld
    assert "_fused_" in policy.match_name.__qualname__ and "_fused_" in policy.match_key.__qualname__
    queries = [*names, *(f"{rng.choice(['www.', 'a.b.', 'x.', 'ok.'])}{n}" for n in names[:500])]
    queries += [n.upper() + "." for n in names[:200]] + [n[1:] for n in names[:200]]
    queries += ["EXACT.example.org.", "a.exact.example.org", "u.t.cdn.example", "cdn.example", "ok.ads.example",
                "z.ok.ads.example", "host.lan", "lan", "com", "", ".", "bücher.example",
                "www.Bücher.example."]  # fmt: skip
    for q in queries:
        want = Policy.match_name(policy, q)
        got = policy.match_name(q)
        assert type(got) is type(want) and got == want, q
        dict_want = as_dict.match_name(q)
        assert (got and (got.rule.id, got.matched)) == (dict_want and (dict_want.rule.id, dict_want.matched)), q
        key = q.lower().removesuffix(".")
        assert policy.match_key(key) == Policy.match_key(policy, key) == as_dict.match_key(key), q


def test_a_colliding_tag_never_matches_in_the_fused_lookups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The planted collision of test_a_colliding_tag_never_matches_in_the_walk, through the fused closures: a tag
    # that points at a listed line of which the probe is only a prefix must not match.
    (tmp_path / "f.txt").write_text("ads.example\nabc.example.net\n")
    (tmp_path / "a.yaml").write_text(
        "app: compact\npolicy:\n  effective: 2023-10-30\nblock:\n  - include: f.txt\n    category: web\n"
    )
    monkeypatch.setattr(matcher, "COMPACT_MIN_NAMES", 0)
    policy = load_policy(tmp_path)
    index = policy._feeds
    assert index is not None
    h = hash("abc.example")
    slot = h % index._size
    while index._table[slot]:
        slot = (slot + 1) % index._size
    index._table[slot] = ((h >> 32) | 1) << 32 | index._texts[0].index("abc.example.net")
    assert policy.match_name("abc.example") is None and policy.match_key("abc.example") is None
    found = policy.match_name("q.abc.example.net")
    assert found is not None and found.matched == "abc.example.net"
    assert policy.match_key("q.abc.example.net") is found.rule


def test_names_with_one_hash_are_all_stored_and_found(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every name given the same hash: the same home slot AND the same tag, what a full 64-bit collision looks like.
    # The build (its inline probing, then _probe at the same tag) must tell them apart by their text: store each
    # distinct name, count only real repeats; every lookup must find exactly the listed names.
    from enforcer.policy import nameindex

    monkeypatch.setattr(nameindex, "hash", lambda s: 0x5EED << 32 | 7, raising=False)
    monkeypatch.setattr(nameindex, "_BATCH", 200)  # many batches
    names = [f"n{i}.example" for i in range(300)]
    text = "".join(f"{n}\n" for n in [*names, *names[:40]])  # 40 real repeats
    rule = _rule(1)
    index = NameIndex()
    assert index.add(text, rule) == 40 and len(index) == 300
    assert all(index.get(n) is rule for n in names)
    assert index.get("n300.example") is None and index.get("n1.exampl") is None
    walk = index.walker({}.get, False)
    assert walk("a.n7.example") == (rule, "n7.example") and walk("a.n7.exampl") is None
    assert [n for n, _ in index.items()] == names  # each at its first listing


@pytest.mark.parametrize(
    "text",
    ["a--b.com\n", "a--b.com\nc.-d.com\n", "a--b.com\nc-.d.com\n", "a--b.com\n-c.com\n", "a--b.com\nc..com\n",
     "a--b.com\nc.com.\n", ".a.com\n", "-a.com\n", "a.com\n.b.com\n", "a.com\nb-\n", "a.b-c.d-e.com\n",
     _BIG[:200_000] + "a--b.example\n" + _BIG[200_000:], _BIG[:200_000] + "a--b.example\nx-.y.com\n" + _BIG[200_000:]],
)  # fmt: skip
def test_hyphen_pairs_in_a_batch_are_read_line_by_line_alike(text: str) -> None:
    # _clean_batch looks for "..", ".-", "-." (and a leading "." or "-") with one search over the batch with its
    # hyphens and line breaks as dots; "--" inside a label (valid) trips that search too and must then pass the exact
    # checks. Either way the feed reads as line by line.
    _reads_line_by_line(text)
