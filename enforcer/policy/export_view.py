"""What every export format sees of a policy: its names as two tables, the apps in monitor mode, the skipped names.

- ``NameView``: the policy's DNS names as two tables (exact hosts, suffix domains) plus the two questions every
  format asks of a name: its own verdict (``apex``) and the verdict of a name below it with no rule of its own
  (``subtree``), and its nesting level (block = even, allow exception = odd) for formats that layer lists
  (``layers``).
- ``Skips``: names a format cannot express, counted per reason with examples for the header.
- ``monitor_rules``: a block rule of an app still in monitor mode, as exported (an exception).
- ``Context`` / ``build_context(policy, fmt, zone, mode, now)``: one export's inputs; the apps in monitor mode come
  from ``Policy.enforcement`` (the one owner of the effective-date rule).
- ``dedupe_cidrs``, ``has_underscore``, ``sort_key``: small helpers several writers share.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .enforcement import to_us
from .matcher import Policy
from .model import IPNetwork, Rule
from .modes import Mode, parse_mode
from .names import InvalidName, normalize_name

# Which --mode each DNS format can answer with; the others ignore --mode.
MODES_OF = {
    "rpz": ("nxdomain", "nodata", "null", "ip"),
    "unbound": ("nxdomain", "nodata", "null", "refused", "ip"),
    "dnsmasq": ("nxdomain", "null", "ip"),
    "hosts": ("nxdomain", "null", "ip"),
}


_SKIP_EXAMPLES = 5


class NameView:
    def __init__(self, policy: Policy, monitor: frozenset[str] = frozenset()) -> None:
        self.hosts: dict[str, Rule] = {}
        self.domains: dict[str, Rule] = {}
        as_exception = monitor_rules(monitor)
        for name, rule, exact in policy.name_entries():
            (self.hosts if exact else self.domains)[name] = as_exception(rule)
        self._levels: dict[str, int | None] = {}

    def names(self) -> list[str]:
        """Every name with a rule, sorted so that a parent comes before its children and output is stable."""
        return sorted(self.hosts.keys() | self.domains.keys(), key=sort_key)

    def verdicts(self, name: str) -> tuple[Rule | None, Rule | None]:
        """(apex, subtree) of ``name`` with one walk up the domain table."""
        sub = self.subtree(name)
        return self.hosts.get(name) or sub, sub

    def covering(self, name: str, include_self: bool) -> tuple[str, Rule] | None:
        """The closest ``domain`` rule at ``name`` (if ``include_self``) or above it, on label boundaries."""
        domains = self.domains
        if include_self:
            rule = domains.get(name)
            if rule is not None:
                return name, rule
        i = name.find(".")
        while i >= 0:
            suffix = name[i + 1 :]
            rule = domains.get(suffix)
            if rule is not None:
                return suffix, rule
            i = name.find(".", i + 1)
        return None

    def subtree(self, name: str) -> Rule | None:
        """The rule deciding a name below ``name`` that has no rule of its own."""
        found = self.covering(name, True)
        return found[1] if found else None

    def apex(self, name: str) -> Rule | None:
        """The rule deciding ``name`` itself (what ``Policy.match_name`` returns)."""
        return self.hosts.get(name) or self.subtree(name)

    def level(self, name: str, exact: bool) -> int | None:
        """Nesting level of a rule: 0 for a block with nothing above it, +1 at each switch between block and allow.

        None for an allow rule that no block rule covers (it changes nothing). Blocks are even, allows odd, so a
        layered target (squid http_access lines, adblock $important) can express exceptions inside exceptions.
        """
        rule = self.hosts[name] if exact else self.domains[name]
        if not exact and name in self._levels:
            return self._levels[name]
        cover = self.covering(name, include_self=exact)
        parent = None if cover is None else self.level(cover[0], False)
        if parent is None:
            level = 0 if rule.action == "block" else None
        else:
            level = parent + (0 if rule.action == cover[1].action else 1)  # type: ignore[index]
        if not exact:
            self._levels[name] = level
        return level

    def redundant(self, name: str, exact: bool) -> bool:
        """True when a covering domain rule at the same level already expresses this rule in a layered list."""
        cover = self.covering(name, include_self=exact)
        return cover is not None and self.level(cover[0], False) == self.level(name, exact)

    def layers(self) -> Iterator[tuple[str, bool, int]]:
        """(name, exact, level) of every rule a layered list must write: the others change nothing (no block
        above an allow) or repeat the covering rule at the same level."""
        for name in self.names():
            for exact in (False, True):
                if name not in (self.hosts if exact else self.domains):
                    continue
                level = self.level(name, exact)
                if level is not None and not self.redundant(name, exact):
                    yield name, exact, level


def sort_key(name: str) -> str:
    # The name read backwards: names group by registrable domain and a parent sorts before its children. A string
    # key, not a tuple of labels: sorting a million names takes a fraction of a second instead of seconds.
    return name[::-1]


@dataclass
class Skips:
    """Names a format cannot express, counted per reason, with a few examples for the header."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, name: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < _SKIP_EXAMPLES:
            ex.append(name)

    def notes(self) -> list[str]:
        out = []
        for reason, n in sorted(self.counts.items()):
            entries = "entry" if n == 1 else "entries"
            out.append(f"skipped {n} {entries} ({reason}), e.g. {', '.join(self.examples[reason])}")
        return out


def monitor_rules(monitor: frozenset[str]) -> Callable[[Rule], Rule]:
    """Rule -> the rule as exported: a block rule of an app still in monitor mode (before its effective date) is
    written as an exception, since at run time such a hit is logged and let through, whatever it is inside."""
    if not monitor:
        return lambda rule: rule
    memo: dict[int, Rule] = {}  # one include rule stands for a million names: replace it once

    def convert(rule: Rule) -> Rule:
        if rule.app not in monitor or rule.action != "block":
            return rule
        new = memo.get(id(rule))
        if new is None:
            new = memo[id(rule)] = dataclasses.replace(rule, action="allow")
        return new

    return convert


@dataclass(frozen=True, slots=True)
class Context:
    policy: Policy
    view: NameView
    skips: Skips
    mode: Mode
    zone: str
    when: datetime
    monitor: frozenset[str] = frozenset()

    def cidrs(self) -> list[tuple[IPNetwork, Rule]]:
        convert = monitor_rules(self.monitor)
        return [(net, convert(rule)) for net, rule in self.policy.cidrs]


def has_underscore(name: str) -> bool:
    return "_" in name


def dedupe_cidrs(cidrs: Iterable[tuple[IPNetwork, Rule]]) -> list[tuple[IPNetwork, Rule]]:
    """One rule per network, allow winning at the same network (as in the matcher), sorted."""
    best: dict[IPNetwork, Rule] = {}
    for net, rule in cidrs:
        if net not in best or rule.action == "allow":
            best[net] = rule
    return sorted(best.items(), key=lambda item: (item[0].version, item[0]))


def check_zone(zone: str) -> str:
    try:
        return normalize_name(zone) + "."
    except InvalidName as exc:
        raise ValueError(f"--zone {zone!r}: {exc}") from None


def build_context(policy: Policy, fmt: str, zone: str, mode: str, now: datetime | None) -> Context:
    parsed = parse_mode(mode)
    allowed = MODES_OF.get(fmt)
    if allowed is not None and parsed.kind not in allowed:
        raise ValueError(f"mode {mode!r} is not supported by the {fmt} format (use one of: {', '.join(allowed)})")
    when = (now or datetime.now(UTC)).astimezone(UTC)
    # Apps whose effective date is still ahead are in monitor mode: nothing of theirs may be blocked yet.
    monitor = policy.enforcement.monitor_apps(to_us(when))
    view = NameView(policy, monitor)
    return Context(policy, view, Skips(), parsed, check_zone(zone) if fmt == "rpz" else zone, when, monitor)
