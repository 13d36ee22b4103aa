"""The names of large ``include:`` feeds in a compact exact table: 1,000,000 names in about 42 MB instead of 150 MB.

A feed's names stay in one string, one name per line ("names text": every name followed by ``\\n``, the shape
``feeds.feed_names_text`` returns and most feed files already have), and an open-addressing table finds them:

- ``NameIndex.add(text, rule)``: insert a feed's names (the first feed that lists a name keeps it; returns how many
  names were already there). ``get(name)`` -> the include rule or None; ``walker(first, tld_rules)``: the policy's
  whole suffix walk (domain rules, then this table, longest suffix first); ``lookups(hosts, domains, apps,
  tld_rules)``: with one feed, the policy's ``match_name``/``match_key`` with that walk inlined (one Python call per
  lookup); ``items()`` in feed order; ``len()``;
  ``single_label``: whether some name is one label (``cn``), so lookups may skip the top-level label otherwise.
- ``iter_names(text)``: the names of a names text in bounded batches (never a million ``str`` objects at once);
  ``text_spans(text)``: the same batches as ``(start, end)`` spans; ``names_digest(text)``: SHA-256 of the names.
- ``COMPACT_MIN_NAMES``: below this many feed names the policy keeps them in its plain dict instead (``dict_items``):
  faster to probe, and small enough that memory does not matter (figures: docs/performance.md, "Policy memory").

A succinct trie of the names reversed (``marisa-trie``, one C call per lookup for every listed suffix) was measured
against this table on the same 1M-name feed (``bench/policy_bench.py --compare N --marisa``): 0.9-1.5 x its lookups
from one run to the next, but 1.3 x (quiet machine) to 2.6 x (loaded) its load CPU and 149 MB peak RSS during the
build (this table: 73 MB), so it is not used (docs/performance.md, "the 1,000,000-name policy").

The table: ``SLOTS_PER_NAME`` slots per name (at most a third full: linear probing then ends a miss after about 1.6
probes), one ``array('q')``: 8 bytes per slot, 24 per name. A slot holds 32 bits of the name's 64-bit ``hash()`` (a
tag: its top half, the low bit forced on so that 0 marks an empty slot) and the offset of the name in the text. The
slot is chosen by the hash modulo the table size, so two names share a slot AND a tag with probability about
2**-32 per probe. That is not ignored: a tag match is only a candidate, and the name is compared with the text at
the stored offset before it counts (``_equal``), so a lookup never returns a rule for a name the feed does not list.
Python's ``hash()`` of a ``str`` is keyed per process (SipHash): a table is built and probed in the process that
loaded the policy and is never written out, so the key never matters and an attacker cannot aim collisions at it
(a collision would cost a string comparison, never a wrong answer).
"""

from __future__ import annotations

import bisect
import hashlib
from array import array
from collections.abc import Callable, Iterator, Mapping
from itertools import accumulate, repeat
from operator import add, and_, mod, or_

from .model import AppPolicy, Match, Rule
from .names import fast_key

# At or above this many feed names in a policy the compact table is used (docs/performance.md, "Policy memory").
COMPACT_MIN_NAMES = 200_000
SLOTS_PER_NAME = 3  # the table is at most a third full
_BATCH = 1 << 18  # characters of names text split at a time: ~16,000 names alive at once
_MAX_TEXT = (1 << 32) - 1  # offsets are 32-bit
_OFFSET = 0xFFFFFFFF  # the low half of a slot: the name's offset
_TAG_BITS = ~_OFFSET  # a hash's top half, in place
_TAG_LOW = 1 << 32  # the tag's low bit, forced on so that no stored value is 0 (an empty slot)
_LABEL_BYTES = bytes(b for b in range(256) if b not in b".\n")  # deleted: a name is left as its dots


def text_spans(text: str, start: int = 0) -> Iterator[tuple[int, int]]:
    """``(start, end)`` spans of a names text, each about ``_BATCH`` characters of whole lines (``end`` is the
    newline after the span's last name, or the end of a text without its final newline)."""
    size = len(text)
    while start < size:
        end = text.find("\n", min(start + _BATCH, size - 1))
        if end < 0:
            end = size
        yield start, end
        start = end + 1


def iter_names(text: str) -> Iterator[tuple[int, list[str]]]:
    """``(offset of the batch's first name, its names)`` for a names text, in batches of bounded size."""
    for start, end in text_spans(text):
        yield start, text[start:end].split("\n")


def names_digest(text: str) -> str:
    """SHA-256 (hex) of the names joined by newlines (the text without its final newline), read in pieces so
    that no second copy of a large feed is made."""
    digest = hashlib.sha256()
    end = len(text) - 1 if text.endswith("\n") else len(text)
    for i in range(0, end, 1 << 20):
        digest.update(text[i : min(i + (1 << 20), end)].encode())
    return digest.hexdigest()


class NameIndex:
    """An exact set of feed names -> the include rule that listed each; see the module docstring."""

    __slots__ = ("_bases", "_count", "_listed", "_rules", "_size", "_table", "_texts", "single_label")

    def __init__(self) -> None:
        self._texts: list[str] = []  # one names text per feed, in the order added
        self._rules: list[Rule] = []  # the include rule of each text
        self._bases: list[int] = []  # offset of each text in the one address space the slots point into
        self._count = 0  # distinct names
        self._listed = 0  # names as listed, repeats included
        self._size = 0
        self._table = array("q")  # per slot: tag << 32 | offset of the name; 0 = empty
        self.single_label = False

    def __len__(self) -> int:
        return self._count

    # -- building -------------------------------------------------------------------------------------------------
    def add(self, text: str, rule: Rule) -> int:
        """Insert the names of ``text`` (every name followed by a newline) for ``rule``; return the number of
        names already present (the earlier listing is kept). The table is rebuilt over every feed added so far
        (``_build``): one large feed is the common case, and a rebuild costs what one insert pass would."""
        if not text:
            return 0
        if not text.endswith("\n"):
            text += "\n"  # every name ends at a newline: the text comparison of a lookup relies on it
        base = self._bases[-1] + len(self._texts[-1]) if self._texts else 0
        if base + len(text) > _MAX_TEXT:
            raise ValueError("include feeds larger than 4 GiB in total")
        self._texts.append(text)
        self._rules.append(rule)
        self._bases.append(base)
        listed = self._listed + text.count("\n")
        before = self._listed - self._count
        self._build(listed)
        self._listed = listed
        return listed - self._count - before

    def _build(self, listed: int) -> None:
        """Build the table over every text, per batch of names: hashes, home slots and packed values (tag | offset)
        by ``map`` in C, then one Python step per name that stores it at its home slot; a taken one (about 1 name
        in 6 at this load) is probed inline, and ``_probe`` compares the texts from an entry with the same tag.
        Measured alternatives (docs/performance.md, "Policy memory" and "The 1,000,000-name policy, fourth pass"):
        storing every value with ``map(table.__setitem__, ...)`` and reading it back costs more (two cache misses per
        name, as many C calls as the loop), sorting the names by table region first does not pay for its passes, and
        indexing the feed while it is checked (its names split and hashed once) saved 1-2 %."""
        size = max(16, SLOTS_PER_NAME * listed)
        self._table = array("q")  # the previous feeds' table is freed before the new one is allocated
        table = array("q", bytes(8 * size))
        self._table, self._size = table, size
        single = False
        dupes = 0
        for f, text in enumerate(self._texts):
            base = self._bases[f]
            for start, end in text_spans(text):
                names = text[start:end].split("\n")
                if not single:
                    # Labels deleted, a name without a dot is an empty line: one bytes pass instead of one per name.
                    dots = text[start : end + 1].encode().translate(None, _LABEL_BYTES)
                    single = dots[:1] == b"\n" or b"\n\n" in dots
                hashes = list(map(hash, names))
                offsets = accumulate(map(add, map(len, names), repeat(1)), initial=base + start + _TAG_LOW)
                values = map(or_, map(and_, hashes, repeat(_TAG_BITS)), offsets)
                for i, v in zip(map(mod, hashes, repeat(size)), values):  # noqa: B905 (the same length)
                    old = table[i]
                    if not old:
                        table[i] = v
                        continue
                    tag = v >> 32
                    while old:
                        if old >> 32 == tag:  # perhaps the same name: _probe compares the texts from here
                            dupes += self._probe(i, v)
                            break
                        i = i + 1 if i + 1 < size else 0
                        old = table[i]
                    else:
                        table[i] = v
        self.single_label = single
        self._count = listed - dupes

    def _probe(self, i: int, v: int) -> int:
        """Store ``v`` (a name's tag and offset) in the first empty slot from ``i`` on; 1 (nothing stored) when a
        slot on the way holds the same name already."""
        table, size, tag = self._table, self._size, v >> 32
        old = table[i]
        name = None
        while old:
            if old >> 32 == tag:
                if name is None:
                    name = self._name_at(v & _OFFSET)
                if self._equal(old & _OFFSET, name):
                    return 1
            i = i + 1 if i + 1 < size else 0
            old = table[i]
        table[i] = v
        return 0

    # -- reading --------------------------------------------------------------------------------------------------
    def _feed_of(self, loc: int) -> int:
        return 0 if len(self._bases) == 1 else bisect.bisect_right(self._bases, loc) - 1

    def _name_at(self, loc: int) -> str:
        f = self._feed_of(loc)
        text, start = self._texts[f], loc - self._bases[f]
        end = text.find("\n", start)
        return text[start:] if end < 0 else text[start:end]

    def _equal(self, loc: int, name: str) -> bool:
        f = self._feed_of(loc)
        text, start = self._texts[f], loc - self._bases[f]
        end = start + len(name)
        return text.startswith(name, start) and (end == len(text) or text[end] == "\n")

    def get(self, name: str) -> Rule | None:
        """The include rule that listed exactly ``name`` (canonical form), or None."""
        return self.after(_nothing)(name)

    def after(self, first: Callable[[str], Rule | None]) -> Callable[[str], Rule | None]:
        """``name -> first(name)``, else this table's rule for it: the policy's per-suffix probe (one Python call
        per suffix, with the table's probe inlined)."""
        size, table, equal, rule_of, feed_of = self._size, self._table, self._equal, self._rules, self._feed_of

        def probe(name: str) -> Rule | None:
            rule = first(name)
            if rule is not None or not size:
                return rule
            h = hash(name)
            i = h % size
            v = table[i]
            if v:
                tag = (h >> 32) | 1
                while v:
                    if v >> 32 == tag and equal(v & _OFFSET, name):
                        return rule_of[feed_of(v & _OFFSET)]
                    i = i + 1 if i + 1 < size else 0
                    v = table[i]
            return None

        return probe

    def walker(self, first: Callable[[str], Rule | None], tld_rules: bool) -> Callable[[str], tuple[Rule, str] | None]:
        """The policy's whole suffix walk over ``first`` (its domain rules) and this table, in one Python call per
        lookup: ``key -> (rule, suffix)`` for the longest suffix of ``key`` on a label boundary (``key`` itself
        first) that ``first`` or a feed lists, ``first`` winning at the same suffix; None when none does. Without
        ``tld_rules`` the last label alone is not tried (no rule is that short). The same answers as asking
        ``after(first)`` per suffix, without a Python call and a closure frame per suffix (a 4-label miss tries 3)."""
        size, table, equal, rule_of, feed_of = self._size, self._table, self._equal, self._rules, self._feed_of
        if not size:
            size, table = 1, array("q", [0])  # an empty index: every probe ends at the empty slot
        if len(self._texts) == 1:
            return self._walker_one(first, tld_rules)

        def walk(key: str) -> tuple[Rule, str] | None:
            name, i = key, key.find(".")  # i: the dot before the next suffix to try
            while True:
                rule = first(name)
                if rule is not None:
                    return rule, name
                h = hash(name)
                j = h % size
                v = table[j]
                if v:
                    tag = (h >> 32) | 1
                    while v:
                        if v >> 32 == tag and equal(v & _OFFSET, name):
                            return rule_of[feed_of(v & _OFFSET)], name
                        j = j + 1 if j + 1 < size else 0
                        v = table[j]
                if i < 0:
                    return None
                j = key.find(".", i + 1)
                if j < 0 and not tld_rules:
                    return None  # the last label alone: no rule is that short
                name, i = key[i + 1 :], j

        return walk

    def _walker_one(
        self, first: Callable[[str], Rule | None], tld_rules: bool
    ) -> Callable[[str], tuple[Rule, str] | None]:
        """``walker`` for one feed (the usual case): its text at offset 0 and its rule are known, so a tag match is
        checked against the text inline instead of through ``_equal`` and ``_feed_of`` (three Python calls per hit).
        The text ends with a newline and a name never holds one, so ``text[end]`` exists wherever the name does."""
        size, table, text, only = self._size, self._table, self._texts[0], self._rules[0]
        starts = text.startswith

        def walk(key: str) -> tuple[Rule, str] | None:
            name, i = key, key.find(".")  # i: the dot before the next suffix to try
            while True:
                rule = first(name)
                if rule is not None:
                    return rule, name
                h = hash(name)
                j = h % size
                v = table[j]
                if v:
                    tag = (h >> 32) | 1
                    while v:
                        if v >> 32 == tag:
                            at = v & _OFFSET
                            if starts(name, at) and text[at + len(name)] == "\n":
                                return only, name
                        j = j + 1 if j + 1 < size else 0
                        v = table[j]
                if i < 0:
                    return None
                j = key.find(".", i + 1)
                if j < 0 and not tld_rules:
                    return None  # the last label alone: no rule is that short
                name, i = key[i + 1 :], j

        return walk

    def lookups(
        self, hosts: Mapping[str, Rule], domains: Mapping[str, Rule], apps: Mapping[str, AppPolicy], tld_rules: bool
    ) -> tuple[Callable[[str], Match | None], Callable[[str], Rule | None]] | None:
        """A policy's ``match_name`` (any spelling of a name -> ``Match``) and ``match_key`` (canonical key ->
        ``Rule``) with this table's walk inlined, for one feed (the usual case; None with several feeds or none).
        They answer as ``Policy.match_name`` / ``match_key`` over ``walker`` do: ``hosts`` (exact) first, then per
        suffix, longest first, ``domains`` before the feed. Fused, a lookup is one Python call instead of three (the
        method, the walk, the ``Match``), with no ``(rule, suffix)`` tuple between them, and a suffix asks the domain
        rules with ``in`` (the hash ``hash()`` just cached) instead of calling ``dict.get``: 1.05-1.11 x
        ``match_name``/s on the 1M-name feed (docs/performance.md, "The 1,000,000-name policy, fourth pass")."""
        if len(self._texts) != 1 or self._rules[0].app not in apps:
            return None
        return self._fused_name(hosts, domains, apps, tld_rules), self._fused_key(hosts, domains, tld_rules)

    def _fused_name(
        self, hosts: Mapping[str, Rule], domains: Mapping[str, Rule], apps: Mapping[str, AppPolicy], tld_rules: bool
    ) -> Callable[[str], Match | None]:
        size, table, text, only = self._size, self._table, self._texts[0], self._rules[0]
        only_app = apps[only.app]
        starts = text.startswith
        new = tuple.__new__  # a Match from a ready tuple in C (matcher._match)

        def match_name(name: str) -> Match | None:
            key = name.lower().removesuffix(".") if name.isascii() else fast_key(name)
            if key in hosts:
                rule = hosts[key]
                return new(Match, (rule, apps[rule.app], key))
            name, i = key, key.find(".")  # i: the dot before the next suffix to try
            while True:
                h = hash(name)
                if name in domains:
                    rule = domains[name]
                    return new(Match, (rule, apps[rule.app], name))
                j = h % size
                v = table[j]
                if v:
                    tag = (h >> 32) | 1
                    while v:
                        if v >> 32 == tag:
                            at = v & _OFFSET
                            if starts(name, at) and text[at + len(name)] == "\n":
                                return new(Match, (only, only_app, name))
                        j = j + 1 if j + 1 < size else 0
                        v = table[j]
                if i < 0:
                    return None
                j = key.find(".", i + 1)
                if j < 0 and not tld_rules:
                    return None  # the last label alone: no rule is that short
                name, i = key[i + 1 :], j

        return match_name

    def _fused_key(
        self, hosts: Mapping[str, Rule], domains: Mapping[str, Rule], tld_rules: bool
    ) -> Callable[[str], Rule | None]:
        size, table, text, only = self._size, self._table, self._texts[0], self._rules[0]
        starts = text.startswith

        def match_key(key: str) -> Rule | None:
            if key in hosts:
                return hosts[key]
            name, i = key, key.find(".")
            while True:
                h = hash(name)
                if name in domains:
                    return domains[name]
                j = h % size
                v = table[j]
                if v:
                    tag = (h >> 32) | 1
                    while v:
                        if v >> 32 == tag:
                            at = v & _OFFSET
                            if starts(name, at) and text[at + len(name)] == "\n":
                                return only
                        j = j + 1 if j + 1 < size else 0
                        v = table[j]
                if i < 0:
                    return None
                j = key.find(".", i + 1)
                if j < 0 and not tld_rules:
                    return None
                name, i = key[i + 1 :], j

        return match_key

    def items(self) -> Iterator[tuple[str, Rule]]:
        """Every name once, with its rule, in feed order (a name listed twice: at its first listing)."""
        for f, text in enumerate(self._texts):
            base, rule = self._bases[f], self._rules[f]
            for offset, names in iter_names(text):
                pos = base + offset
                for name in names:
                    if self._stored_at(name, pos):
                        yield name, rule
                    pos += len(name) + 1

    def _stored_at(self, name: str, pos: int) -> bool:
        size, table = self._size, self._table
        i = hash(name) % size
        v = table[i]
        while v:
            if v & _OFFSET == pos:
                return True
            i = i + 1 if i + 1 < size else 0
            v = table[i]
        return False

    def nbytes(self) -> int:
        """Memory held: the table and the texts (ASCII: one byte per character)."""
        return len(self._table) * 8 + sum(len(t) for t in self._texts)


def _nothing(name: str) -> Rule | None:
    return None
