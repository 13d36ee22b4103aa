"""Whether a block match is enforced: the one owner of "on or after the app's effective date, and not an exempt client".

Every place that turns a block match into "blocked" or "monitored" asks this module: the policy's ``Match.enforced``
(proxy and ``enforcer lookup``), the exports (which apps are still in monitor mode), the resolver, the proxy's hit
events, and the analyst (its SQL and the report's Python both come from ``Enforcement``).

- ``to_us(when)``: an aware datetime -> integer microseconds since the epoch, exactly (the unit every comparison
  here is made in, so the effective instant itself is enforced and one microsecond earlier is not).
- ``Cutover``: one app's precomputed rule: ``at_us`` (effective instant, integer microseconds UTC), ``at`` (the same
  in float seconds, for a caller holding ``time.time()``), ``exempt`` (its exempt networks). ``decide(client,
  at_us)`` -> ``(enforced, exempt)``; ``is_exempt(client)`` takes an address, an address string (``%zone`` and
  IPv4-mapped forms included) or None: an ``enforcer.net.NetworkSet``, memoised per string and bounded.
- ``Enforcement(apps)``: the per-``Policy`` table (``Policy.enforcement``): ``decide(app, client, at_us)``,
  ``is_exempt(app, client)``, ``monitor_apps(at_us)``, ``cutover(app)``; ``sql(...)`` renders the same rule as an SQL
  expression over ``(denied, ts, app, client)`` columns for the analyst's store. An app the table does not know
  (events of an app since removed from the policy) has no effective date and no exempt clients: enforced.
- Kinds: a ``Cutover`` is of a ``ban`` app (the default) or a ``control`` app (``kind: control`` blocklists: bypass
  controls, which block but never make a device non-compliant). ``Enforcement.controls`` / ``kind(app)``; ``sql`` and
  ``enforced_attempt`` count ban apps only unless told ``kind="control"`` (bypass attempts) or ``kind=None`` (both).
  Blocking (``decide``) is the same for both kinds.

Nothing here reads the clock: callers pass "now". Hot path (the resolver, once per blocked query):
``policy.enforcement.decide(rule.app, host, time.time_ns() // 1000)``: one dict look-up and one comparison, plus a
memoised membership test when the app has exempt clients.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from ..net import IPAddress, IPNetwork, NetworkSet

if TYPE_CHECKING:
    from .model import AppPolicy

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# The SQL function the analyst's store registers for the exempt part of the rule (see ``Enforcement.sql``).
SQL_EXEMPT_FUNCTION = "enforcer_exempt"
AppKind = Literal["ban", "control"]


def to_us(when: datetime) -> int:
    """An aware datetime -> integer microseconds since the Unix epoch (exact; a naive datetime is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _US


class Cutover:
    """One app's enforcement rule, precomputed: effective instant and exempt networks."""

    __slots__ = ("app", "at", "at_us", "exempt", "exempt_set", "kind")

    def __init__(self, app: str, effective: datetime, exempt: Iterable[IPNetwork] = (), kind: AppKind = "ban") -> None:
        self.app = app
        self.kind = kind
        self.at_us = to_us(effective)
        self.at = self.at_us / 1_000_000
        self.exempt: tuple[IPNetwork, ...] = tuple(exempt)
        self.exempt_set = NetworkSet(self.exempt)

    def is_exempt(self, client: IPAddress | str | None) -> bool:
        """Whether ``client`` lies in one of the app's exempt networks (an IPv4-mapped IPv6 address as its IPv4)."""
        if client is None or not self.exempt:
            return False
        if isinstance(client, str):
            return self.exempt_set.contains_host(client)  # memoised per text, bounded (enforcer.net)
        return client in self.exempt_set

    def decide(self, client: IPAddress | str | None, at_us: int) -> tuple[bool, bool]:
        """``(enforced, exempt)`` for a block rule of this app, asked by ``client`` at ``at_us``."""
        if not self.exempt:
            return at_us >= self.at_us, False
        exempt = self.is_exempt(client)
        return (not exempt and at_us >= self.at_us), exempt

    def __repr__(self) -> str:
        kind = f", kind={self.kind!r}" if self.kind != "ban" else ""
        return f"Cutover({self.app!r}, at_us={self.at_us}, exempt={[str(n) for n in self.exempt]}{kind})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Report workers get the table pickled; the memo stays behind.
        return (_cutover_from_us, (self.app, self.at_us, self.exempt, self.kind))


def _cutover_from_us(app: str, at_us: int, exempt: tuple[IPNetwork, ...], kind: AppKind = "ban") -> Cutover:
    return Cutover(app, _EPOCH + at_us * _US, exempt, kind)


_ALWAYS = Cutover("", _EPOCH)  # an app the policy does not know: no date, no exempt clients


class Enforcement:
    """The per-policy table: app -> ``Cutover``. Immutable once built; a reload builds a new policy and table."""

    __slots__ = ("controls", "cutovers")

    def __init__(self, apps: Mapping[str, AppPolicy] | Iterable[Cutover]) -> None:
        if isinstance(apps, Mapping):
            self.cutovers = {name: app.cutover for name, app in apps.items()}
        else:
            self.cutovers = {c.app: c for c in apps}
        self.controls = frozenset(name for name, c in self.cutovers.items() if c.kind == "control")

    def key(self) -> tuple[tuple[str, int, tuple[str, ...], str], ...]:
        """A hashable value equal for two tables with the same rule (for memoising what was computed under one)."""
        return tuple(sorted((c.app, c.at_us, tuple(map(str, c.exempt)), c.kind) for c in self.cutovers.values()))

    def kind(self, app: str) -> AppKind:
        """``control`` for an app of a ``kind: control`` blocklist; ``ban`` otherwise (an unknown app too)."""
        return "control" if app in self.controls else "ban"

    def cutover(self, app: str) -> Cutover:
        return self.cutovers.get(app, _ALWAYS)

    def decide(self, app: str, client: IPAddress | str | None, at_us: int) -> tuple[bool, bool]:
        """``(enforced, exempt)`` for a block rule of ``app``, asked by ``client`` (None: unknown) at ``at_us``."""
        return self.cutovers.get(app, _ALWAYS).decide(client, at_us)

    def decide_at(self, app: str, client: IPAddress | str | None, when: datetime) -> tuple[bool, bool]:
        """``decide`` with an aware datetime."""
        return self.decide(app, client, to_us(when))

    def is_exempt(self, app: str, client: IPAddress | str | None) -> bool:
        return self.cutovers.get(app, _ALWAYS).is_exempt(client)

    def monitor_apps(self, at_us: int) -> frozenset[str]:
        """Apps whose effective date is still ahead at ``at_us``: nothing of theirs is blocked yet, for anyone."""
        return frozenset(app for app, c in self.cutovers.items() if at_us < c.at_us)

    def sql(
        self,
        denied: str = "denied",
        ts: str = "ts",
        app: str = "app",
        client: str = "client",
        kind: AppKind | None = "ban",
    ) -> tuple[str, list[Any]]:
        """The rule as an SQL expression over an event row: ``denied`` and ``decide(app, client, ts)`` enforced.

        ``ts`` is integer microseconds. The effective dates become a CASE on the app; the exempt part calls
        ``SQL_EXEMPT_FUNCTION(app, client)`` (register ``is_exempt`` under that name on the connection), and only
        for apps that have exempt clients, so a policy without any costs nothing beyond the CASE.

        ``kind``: ``ban`` (the default: the non-compliance the analyst counts) leaves control apps out, ``control``
        keeps only them (bypass attempts), None counts both. A policy without control apps renders the same SQL
        for ``ban`` and None.
        """
        params: list[Any] = []
        kind_expr = ""
        if kind is not None and (self.controls or kind == "control"):
            if self.controls:
                marks = ",".join("?" * len(self.controls))
                kind_expr = f" AND {app} {'NOT IN' if kind == 'ban' else 'IN'} ({marks})"
                params += sorted(self.controls)
            else:
                kind_expr = " AND 0"  # no control app: no bypass attempt
        if not self.cutovers:
            return (f"({denied}{kind_expr})" if kind_expr else denied), params
        cases = " ".join("WHEN ? THEN ?" for _ in self.cutovers)
        for name, c in self.cutovers.items():
            params += [name, c.at_us]
        expr = f"{denied}{kind_expr} AND {ts} >= (CASE {app} {cases} ELSE 0 END)"
        with_exempt = [name for name, c in self.cutovers.items() if c.exempt]
        if with_exempt:
            marks = ",".join("?" * len(with_exempt))
            expr += f" AND NOT (CASE WHEN {app} IN ({marks}) THEN {SQL_EXEMPT_FUNCTION}({app}, {client}) ELSE 0 END)"
            params += with_exempt
        return f"({expr})", params

    def enforced_attempt(self, denied: bool, app: str, client: str, ts_us: int, kind: AppKind | None = "ban") -> bool:
        """The analyst's rule in Python, the same as ``sql``: a denied event that the table enforces, of an app of
        ``kind`` (``ban`` by default: control apps are bypass attempts, never non-compliance; None: either)."""
        if kind is not None and (app in self.controls) != (kind == "control"):
            return False
        return denied and self.cutovers.get(app, _ALWAYS).decide(client, ts_us)[0]
