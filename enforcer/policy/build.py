"""Parsed blocklist files -> one ``Policy``.

- ``ParsedFile``: what the parser (``blocklist.py``) made of one file: its ``AppPolicy``, its rules with their payload
  (compiled url patterns, a CIDR) and YAML node, its include feeds' names (one string per feed, a name per line:
  ``nameindex.py``).
- ``PolicyBuilder``: ``add_file`` per file (duplicate app ids and rule ids are errors, the same rule twice a warning),
  then ``build``: name/host tables (allow wins at equal specificity), url index, CIDRs, shadowed and over-broad rule
  warnings (``lint``), and the fingerprint over sorted rule lines (reordering a file does not change it; an app's
  ``kind: control`` and a rule's ``dns_action`` are in it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from . import lint
from .bounded import node_pos
from .matcher import Policy
from .model import AppPolicy, IPNetwork, Problem, Rule
from .nameindex import NameIndex
from .names import parents
from .urlrules import UrlIndex, UrlPattern


@dataclass
class ParsedFile:
    app: AppPolicy
    rules: list[tuple[Rule, Any]] = field(default_factory=list)  # (rule, payload)
    feeds: list[tuple[Rule, str, str]] = field(default_factory=list)  # include rule, names text, feed digest
    app_pos: tuple[int, int] = (1, 1)


class PolicyBuilder:
    """Parsed files -> one ``Policy``: tables, precedence, duplicate/shadow/over-broad warnings, fingerprint."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        self.apps: dict[str, AppPolicy] = {}
        self.app_pos: dict[str, str] = {}
        self.rules: list[Rule] = []
        self.hosts: dict[str, Rule] = {}
        self.domains: dict[str, Rule] = {}  # domain rules (and, at a name a feed lists too, the winner)
        self.feed_names = NameIndex()  # include feeds' names: the first feed to list a name keeps it
        self.patterns: list[UrlPattern] = []
        self.cidrs: list[tuple[IPNetwork, Rule]] = []
        self.counts: dict[tuple[str, str], int] = {}
        self.positions: dict[int, tuple[str, int, int]] = {}  # id(rule) -> where, for warnings
        # The fingerprint hashes sorted rule lines, so reordering a file does not change it.
        self.digest_lines: list[str] = []
        self.ids: dict[str, Rule] = {}

    def warn_at(self, rule: Rule, message: str) -> None:
        path, line, col = self.positions.get(id(rule), (rule.source.rsplit(":", 1)[0], 1, 1))
        self.problems.append(Problem(path, line, col, message, "warning"))

    def add_file(self, parsed: ParsedFile, app_id: str) -> None:
        app = parsed.app
        if app_id in self.apps:
            first = self.app_pos[app_id]
            line, col = parsed.app_pos
            self.problems.append(
                Problem(app.path, line, col, f"duplicate app id '{app_id}' (first defined at {first})")
            )
            return
        self.apps[app_id] = app
        self.app_pos[app_id] = f"{app.path}:{parsed.app_pos[0]}"
        # kind and dns_action only when not the default, so a policy without them keeps its fingerprint.
        kind = f"\0{app.kind}" if app.kind != "ban" else ""
        self.digest_lines.append(
            f"app\0{app_id}\0{app.effective.isoformat()}\0{','.join(map(str, app.exempt_clients))}{kind}"
        )
        feeds = {id(rule): (names, digest) for rule, names, digest in parsed.feeds}
        for rule, (payload, node) in parsed.rules:
            self.positions[id(rule)] = (app.path, *node_pos(node))
            if self.admit(rule, app.path, node):
                self.index(rule, payload, feeds)

    def admit(self, rule: Rule, path: str, node: Any) -> bool:
        """Whether ``rule`` is new; a second rule under a known id is a warning (the same rule) or an error."""
        prior = self.ids.get(rule.id)
        if prior is None:
            self.ids[rule.id] = rule
            return True
        line, col = node_pos(node)
        if (prior.app, prior.action, prior.kind, prior.value) == (rule.app, rule.action, rule.kind, rule.value):
            # The same rule written twice is a warning (an error under --strict); the prior one stays.
            differs = (
                f"; its category {rule.category} differs and is ignored" if prior.category != rule.category else ""
            )
            message = f"duplicate rule: {rule.kind} {rule.value} is already listed at {prior.source}{differs}"
            self.problems.append(Problem(path, line, col, message, "warning"))
        else:
            self.problems.append(Problem(path, line, col, f"duplicate rule id '{rule.id}' (first at {prior.source})"))
        return False

    def index(self, rule: Rule, payload: Any, feeds: dict[int, tuple[str, str]]) -> None:
        """Put an admitted rule in its table and count it (an include: its names)."""
        self.rules.append(rule)
        dns_action = f"\0{rule.dns_action}" if rule.dns_action is not None else ""
        self.digest_lines.append(
            f"{rule.app}\0{rule.action}\0{rule.kind}\0{rule.value}\0{rule.category}\0{rule.method}{dns_action}"
        )
        key = (rule.app, rule.kind)
        n = 1
        if rule.kind in ("domain", "host"):
            self.add_name(self.domains if rule.kind == "domain" else self.hosts, rule.value, rule)
        elif rule.kind == "include":
            names, digest = feeds[id(rule)]
            self.digest_lines.append(f"feed\0{rule.id}\0{digest}")
            self.add_feed(names, rule)
            n = names.count("\n")
        elif rule.kind == "cidr":
            self.cidrs.append((payload, rule))
        else:  # url, store
            self.patterns.extend(payload)
        self.counts[key] = self.counts.get(key, 0) + n

    def add_name(self, table: dict[str, Rule], name: str, rule: Rule) -> None:
        old = table.get(name)
        if old is None and table is self.domains:
            old = self.feed_names.get(name)
        if old is None:
            table[name] = rule
            return
        if old.action == rule.action:
            self.warn_at(rule, f"duplicate rule: {rule.kind} {name} is already listed at {old.source}")
            return
        # Same name, opposite actions: equal specificity, so allow wins.
        table[name] = rule if rule.action == "allow" else old

    def add_feed(self, names: str, rule: Rule) -> None:
        dupes = self.feed_names.add(names, rule)
        # A name a domain rule already listed: that rule decides it (the table keeps it, and lookups ask the domain
        # rules first), so this feed's listing counts as a repeat.
        dupes += sum(1 for name in self.domains if self.feed_names.get(name) is rule)
        if dupes:
            self.warn_at(rule, f"{dupes} name(s) of include {rule.value} are listed more than once")

    def check_shadowing(self) -> None:
        """Warn about explicit rules that can never change a verdict or its attribution."""
        self.check_name_shadowing()
        self.check_cidr_shadowing()

    def check_name_shadowing(self) -> None:
        for table, is_host in ((self.hosts, True), (self.domains, False)):
            for name, rule in table.items():
                if rule.kind == "include":
                    continue
                covering = None
                for suffix in parents(name)[0 if is_host else 1 :]:
                    cand = self.domains.get(suffix)
                    if cand is None:
                        cand = self.feed_names.get(suffix)
                    if cand is not None and cand is not rule:
                        covering = cand
                        break
                if covering is None:
                    if rule.action == "allow":
                        self.warn_at(rule, f"allow rule for {name} has no effect: no block rule covers it")
                    continue
                if (
                    covering.action == rule.action
                    and covering.app == rule.app
                    and covering.category == rule.category
                    and covering.dns_action == rule.dns_action  # another answer is not a repeat
                    and covering.kind != "include"
                ):
                    self.warn_at(
                        rule,
                        f"shadowed rule: {rule.kind} {name} is already covered by {covering.id} at {covering.source}",
                    )

    def check_cidr_shadowing(self) -> None:
        block_cidrs = [(n, r) for n, r in self.cidrs if r.action == "block"]
        for net, rule in self.cidrs:
            for other, orule in block_cidrs:
                if orule is rule or other.version != net.version or other == net:
                    continue
                if net.subnet_of(other) and orule.app == rule.app and orule.category == rule.category:  # type: ignore[arg-type]
                    self.warn_at(rule, f"shadowed rule: cidr {net} is inside {other} ({orule.source})")
                    break

    def check_breadth(self) -> None:
        """Warn about rules that cover a public suffix, a huge address range or every URL (``lint``)."""
        for rule in self.rules:
            if rule.kind in ("domain", "host"):
                msg = lint.name_warning(rule.kind, rule.value, rule.action)
                if msg is not None:
                    self.warn_at(rule, msg)
        for net, rule in self.cidrs:
            msg = lint.network_warning(net, "rule: cidr")
            if msg is not None:
                self.warn_at(rule, msg)
        for pattern in self.patterns:
            if pattern.rule.kind == "url":
                msg = lint.url_warning(pattern)
                if msg is not None:
                    self.warn_at(pattern.rule, msg)

    def build(self, files: tuple[str, ...]) -> Policy:
        self.check_shadowing()
        self.check_breadth()
        warnings = tuple(p for p in self.problems if p.severity == "warning")
        return Policy(
            apps=self.apps,
            rules=tuple(self.rules),
            hosts=self.hosts,
            domains=self.domains,
            urls=UrlIndex(self.patterns),
            cidrs=self.cidrs,
            fingerprint=hashlib.sha256("\n".join(sorted(self.digest_lines)).encode()).hexdigest(),
            counts=self.counts,
            warnings=warnings,
            files=files,
            feeds=self.feed_names,
        )
