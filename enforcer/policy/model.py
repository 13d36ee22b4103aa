"""The frozen objects a loaded policy is made of: apps, rules, matches and the problems found while loading.

Nothing here does I/O or reads the clock; ``Match.enforced`` takes "now" and the client as arguments and asks the
app's ``Cutover`` (``enforcement.py``, the one owner of the effective-date / exempt-client rule).

- ``AppPolicy.localized(field, lang)``: the ``notice`` or ``reference`` in a language (``fr``, ``fr-CA``), falling back
  to English, then to the plain ``.notice`` / ``.reference`` (English, or the only text given).
- ``AppPolicy.kind``: ``ban`` (an app under the ban, the default) or ``control`` (a ``kind: control`` blocklist:
  bypass controls that block, log and count but never make a device non-compliant).
- ``Rule.dns_action``: the DNS answer a block rule asks for (``DNS_ACTIONS``), overriding the resolver's mode; None:
  the resolver's mode.
- ``primary_tag(lang)``: the BCP 47 primary language subtag of a tag (``fr-CA`` -> ``fr``), or ``""``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, NamedTuple

from ..net import IPAddress as IPAddress  # re-exported: policy modules annotate with them
from ..net import IPNetwork as IPNetwork
from .enforcement import AppKind as AppKind  # re-exported: "ban" | "control"
from .enforcement import Cutover, to_us

CATEGORIES = ("messaging", "update", "download", "store", "telemetry", "payments", "bypass", "web")
NAME_KINDS = ("domain", "host", "include")
KINDS = ("domain", "host", "url", "cidr", "store", "include")
Action = Literal["block", "allow"]
APP_KINDS: tuple[AppKind, ...] = ("ban", "control")
# The per-rule DNS answers: the resolver's modes (enforcer/policy/modes.py) that a rule may ask for.
DNS_ACTIONS = ("nxdomain", "null", "nodata", "refused")
TextField = Literal["notice", "reference"]
_PRIMARY_TAG = re.compile(r"[a-z]{2,3}")  # BCP 47 primary language subtag (ISO 639-1/-2/-3); longer ones are reserved


def primary_tag(lang: str) -> str:
    """The primary language subtag of a BCP 47 tag, lower case (``fr-CA`` -> ``fr``); ``""`` when it has none."""
    head = lang.strip().replace("_", "-").split("-", 1)[0].lower()
    return head if _PRIMARY_TAG.fullmatch(head) else ""


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding while loading a policy, located at the YAML node (or feed line) that caused it."""

    path: str
    line: int
    col: int
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.path}:{self.line}:{self.col}: {prefix}{self.message}"


class PolicyError(Exception):
    """The policy could not be loaded; ``problems`` holds every error (and the warnings seen so far)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        super().__init__("\n".join(str(p) for p in errors) or "invalid policy")


@dataclass(frozen=True, slots=True)
class AppPolicy:
    """Per-app metadata from the ``policy:`` section: when enforcement starts, who is exempt, what users are told."""

    app: str
    name: str
    vendor: str
    effective: datetime  # timezone-aware
    timezone: str
    exempt_clients: tuple[IPNetwork, ...]
    notice: str  # English, or the only text given (``localized`` picks another language)
    reference: str
    path: str
    # Per-language texts as written, ((field, primary tag, text), ...); empty when notice/reference are plain strings.
    # A tuple, not a dict, so the frozen AppPolicy stays hashable.
    translations: tuple[tuple[TextField, str, str], ...] = ()
    kind: AppKind = "ban"
    cutover: Cutover = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cutover", Cutover(self.app, self.effective, self.exempt_clients, self.kind))

    def localized(self, field: TextField, lang: str) -> str:
        """``notice`` or ``reference`` in ``lang`` (a BCP 47 tag: ``fr``, ``fr-CA``); English when the policy does
        not give that language, else the plain attribute (the only text given). ``""`` when there is no text."""
        want = primary_tag(lang)
        fallback = ""
        for name, tag, text in self.translations:
            if name != field:
                continue
            if tag == want:
                return text
            if tag == "en":
                fallback = text
        return fallback or (self.notice if field == "notice" else self.reference)

    def is_exempt(self, client: IPAddress | str | None) -> bool:
        return self.cutover.is_exempt(client)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule as written. ``include`` rules stand for every name of their feed."""

    id: str
    app: str
    action: Action
    kind: str
    value: str
    category: str | None
    source: str  # "PATH:LINE" of the rule's node, shown to admins and put in rule.reference of events
    method: str | None = None
    comment: str | None = None
    dns_action: str | None = None  # one of DNS_ACTIONS, or None: the resolver's --mode


class Match(NamedTuple):
    """The winning rule for a query. ``matched`` is the name, CIDR or pattern that matched.

    A NamedTuple rather than a frozen dataclass: it is built on every hit of the DNS hot path, and a tuple is built
    in half the time of a frozen dataclass (which sets each field through object.__setattr__). Immutable all the same.
    """

    rule: Rule
    app: AppPolicy
    matched: str = ""

    @property
    def verdict(self) -> Action:
        return self.rule.action

    @property
    def blocked(self) -> bool:
        return self.rule.action == "block"

    @property
    def category(self) -> str | None:
        return self.rule.category

    def enforced(self, at: datetime, client: IPAddress | None = None) -> bool:
        """True when this match must actually block: a block rule, on or after the effective date, not exempt.

        A block match that is not enforced is a *monitor* hit: logged, traffic allowed.
        """
        if self.rule.action != "block":
            return False
        return self.app.cutover.decide(client, to_us(at))[0]
