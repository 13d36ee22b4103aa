"""Who made an attempt: each event gets the best identity it has, and says which; attempts counted as bursts.

- ``SOURCES``: the identity sources in order of trust: ``client-id`` (the event's ``device.id``, an encrypted-DNS
  ClientID) > ``lease`` (the DHCP lease that held the address at the event's time, ``leases.LeaseBook``) >
  ``proxy-user`` (``user.name``, the proxy login) > ``cidr`` (the inventory row whose range holds the address) >
  ``address`` (the bare address).
- ``Identity``: one identified client: ``key`` (what report rows group by: ``id:<device.id>``, ``mac:<MAC>`` (or
  ``lease:<client-id or hostname>``), ``user:<name>``, else the address itself), ``source``, and the inventory's
  ``device``/``owner``/``unit`` when a row matches (by ClientID, MAC, DHCP client-id or hostname, or CIDR), the
  lease's ``mac``, the ``device_id``.
- ``Identifier(inventory, leases)``: ``identify(client, ts_us, device_id, user)`` -> ``Identity`` (bounded caches;
  per address, the lease interval of its last event: the next events of that address inside it need no search);
  ``identify_span(client, ts_us)``: the identity of an event without device.id and user, and the time interval over
  which it is the same (``enforcer report`` keeps it per client).
- ``Tallies`` / ``add_hit`` (``tally_entry`` + ``count_hit``) / ``merge_tallies``: per (section, identity key, app)
  the raw hits, enforced hits, first/last time, the hit times (for the bursts), the last address and user seen.
  Section ``"clients"`` or ``"bypass"`` (events with ``labels.kind == "control"``: bypass attempts, never
  non-compliance).
- ``bursts(times, window_us)``: an *attempt* is a burst: the hits of one identity on one app within ``window_us`` of
  the burst's first hit count once (``--attempt-window``, ``DEFAULT_WINDOW_S``); anchored at the first hit, so an
  app's reconnect loop every 30 s is one attempt a minute, not one for ever.
- ``report_rows(tallies, window_us)``: the report's ``clients`` and ``bypass`` rows (``hits``, ``attempts``,
  ``enforced_hits``, ``enforced_attempts``, ``identity``, ``owner``, ``unit``, ``mac``, ``user``, ...).
- ``tallies_of_apps(tallies, apps)``: the tallies of an app filter taken from the unfiltered ones.
- ``tally_store_rows(rows, identifier)``: the same tallies from the store's ``(app, client, device_id, user, kind,
  ts_us, enforced)`` rows, so ``/api/report``, the dashboard and ``enforcer report`` count alike.
- ``AnalystIdentity(leases, window_s, inventory)``: the analyst's sources: the ``--leases`` files followed as they
  change (``refresh()``, blocking: the analyst calls it off the event loop), ``identifier()`` for the current book,
  ``window_s`` (``--attempt-window``).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import operator
import threading
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .inventory import Device, Inventory
from .leases import SPAN_EDGE, Lease, LeaseBook, LeaseFiles
from .records import us_to_ts

SOURCES = ("client-id", "lease", "proxy-user", "cidr", "address")
DEFAULT_WINDOW_S = 60
CONTROL_KIND = "control"  # labels.kind of a bypass attempt (a control app: encrypted DNS, VPN, ...)
CLIENTS, BYPASS = "clients", "bypass"
_CACHE_MAX = 100_000
_LOGGED_MAX = 1000  # distinct lease problems remembered as logged

log = logging.getLogger("enforcer.analyst.identity")


@dataclass(frozen=True, slots=True)
class Identity:
    key: str
    source: str
    device: str | None = None
    owner: str | None = None
    unit: str | None = None
    mac: str | None = None
    device_id: str | None = None

    def __reduce__(
        self,
    ) -> tuple[type[Identity], tuple[str, str, str | None, str | None, str | None, str | None, str | None]]:
        # A report worker's result holds one per device (20,000 and more): the dataclass's own pickling (state
        # through __getstate__ per object) cost the main process a third more to read them back.
        return (Identity, (self.key, self.source, self.device, self.owner, self.unit, self.mac, self.device_id))


def _with(dev: Device | None, key: str, source: str, mac: str | None = None, device_id: str | None = None) -> Identity:
    if dev is None:
        return Identity(key, source, None, None, None, mac, device_id)
    return Identity(key, source, dev.device, dev.owner, dev.unit, mac, device_id)


class Identifier:
    """``identify`` one event's client; results that do not depend on time are cached (bounded)."""

    def __init__(self, inventory: Inventory | None = None, leases: LeaseBook | None = None) -> None:
        self.inventory = inventory if inventory is not None else Inventory()
        self.leases = leases if leases is not None and len(leases) else None
        self._by_address: dict[str, Identity] = {}
        self._canonical: dict[str, str] = {}
        self._by_id: dict[str, Identity] = {}
        self._by_lease: dict[int, tuple[Lease, Identity]] = {}
        # client -> (lo, hi, the lease identity or None): LeaseBook.span's answer for the client's last event. An
        # address's events come in time order within a file, and a lease lasts hours to days: most events fall in
        # the interval of the previous one (measured: 15 us an event for the search and the caches, 10M events).
        self._spans: dict[str, tuple[int, int, Identity | None]] = {}
        self._version = self.leases.version if self.leases is not None else 0

    def identify(self, client: str, ts_us: int, device_id: str = "", user: str = "") -> Identity:
        if device_id:
            found = self._by_id.get(device_id)
            if found is None:
                found = _with(self.inventory.by_client_id(device_id), "id:" + device_id, "client-id", None, device_id)
                _put(self._by_id, device_id, found)
            return found
        if self.leases is not None and client:
            span = self._spans.get(client)
            if span is None or not span[0] <= ts_us < span[1] or self._version != self.leases.version:
                span = self._span(client, ts_us)
            if span[2] is not None:
                return span[2]
        if user:
            return Identity("user:" + user, "proxy-user")
        found = self._by_address.get(client)
        if found is None:
            dev = self.inventory.lookup(client) if client else None
            found = _with(dev, client, "cidr" if dev is not None else "address")
            _put(self._by_address, client, found)
        return found

    def identify_span(self, client: str, ts_us: int) -> tuple[int, int, Identity]:
        """``(lo, hi, identify(client, ts_us))`` for an event without device.id and user: the identity is the same
        for every time in ``[lo, hi)`` (the lease interval, or all time for a client no lease book can name), so a
        caller can keep it for that client's next events."""
        if self.leases is not None and client:
            # The interval kept for the client (``identify``'s): ``enforcer report`` asks again for each of its
            # tasks, the worker's identifier still knows.
            span = self._spans.get(client)
            if span is None or not span[0] <= ts_us < span[1] or self._version != self.leases.version:
                span = self._span(client, ts_us)
            lo, hi, ident = span
            return lo, hi, ident if ident is not None else self.identify(client, ts_us)
        return -SPAN_EDGE, SPAN_EDGE, self.identify(client, ts_us)

    def _span(self, client: str, ts_us: int) -> tuple[int, int, Identity | None]:
        """The lease identity of ``client`` at ``ts_us`` (None: no lease then) and the interval where it holds."""
        assert self.leases is not None
        if self._version != self.leases.version:  # the book changed since: what was kept may be wrong
            self._spans.clear()
            self._version = self.leases.version
        lease, lo, hi = self.leases.span(self._address(client), ts_us)
        ident = None
        if lease is not None:
            # By the lease object (the book keeps it alive; ``is`` guards against a reused id): one identity per
            # lease, however many intervals and addresses refer to it.
            cached = self._by_lease.get(id(lease))
            if cached is None or cached[0] is not lease:
                cached = (lease, self._lease_identity(*lease.holder))
                _put(self._by_lease, id(lease), cached)
            ident = cached[1]
        span = (lo, hi, ident)
        _put(self._spans, client, span)
        return span

    def _lease_identity(self, mac: str, client_id: str, hostname: str) -> Identity:
        inv = self.inventory
        dev = (
            (inv.by_mac(mac) if mac else None)
            or (inv.by_client_id(client_id) if client_id else None)
            or (inv.by_hostname(hostname) if hostname else None)
        )
        key = "mac:" + mac if mac else "lease:" + (client_id or hostname)
        return _with(dev, key, "lease", mac or None)

    def _address(self, client: str) -> str:
        """The canonical spelling the lease book uses (``::ffff:10.1.2.3`` -> ``10.1.2.3``, zone stripped)."""
        found = self._canonical.get(client)
        if found is None:
            text = client.partition("%")[0]
            try:
                addr = ipaddress.ip_address(text)
                mapped = getattr(addr, "ipv4_mapped", None)
                found = str(mapped or addr)
            except ValueError:
                found = client
            _put(self._canonical, client, found)
        return found


def _put(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


# (section, identity key, app) -> [hits, enforced hits, first/last ts_us, times, identity, last client, last user]
# times: array of ts_us * 2 + enforced (one array for both counts: a burst of enforced hits is read off the same
# sorted times).
Tallies = dict[tuple[str, str, str], list[Any]]
HITS, ENFORCED, FIRST, LAST, TIMES, IDENT, CLIENT, USER = range(8)


def add_hit(
    tallies: Tallies,
    identity: Identity,
    app: str,
    client: str,
    user: str,
    ts_us: int,
    enforced: bool,
    kind: str = "",
) -> None:
    """Count one event at ``ts_us`` (microseconds since the epoch)."""
    count_hit(tally_entry(tallies, identity, app, client, user, ts_us, kind), client, user, ts_us, enforced)


def tally_entry(
    tallies: Tallies, identity: Identity, app: str, client: str, user: str, ts_us: int, kind: str = ""
) -> list[Any]:
    """The entry of ``tallies`` that an event of ``identity`` on ``app`` counts in (made, with no hits, if new): a
    caller that keeps it (``enforcer report``, per client and lease interval) counts the next events of that device
    with ``count_hit`` alone."""
    key = (BYPASS if kind == CONTROL_KIND else CLIENTS, identity.key, app)
    entry = tallies.get(key)
    if entry is None:
        entry = tallies[key] = [0, 0, ts_us, ts_us, array("q"), identity, client, user]
    return entry


def count_hit(entry: list[Any], client: str, user: str, ts_us: int, enforced: bool) -> None:
    """One event at ``ts_us`` counted in ``entry`` (``tally_entry``)."""
    entry[HITS] += 1
    if enforced:
        entry[ENFORCED] += 1
    if ts_us < entry[FIRST]:
        entry[FIRST] = ts_us
    elif ts_us >= entry[LAST]:
        entry[LAST] = ts_us
        entry[CLIENT] = client
        if user:
            entry[USER] = user
    entry[TIMES].append(ts_us * 2 + (1 if enforced else 0))


def tallies_of_apps(tallies: Tallies, apps: Iterable[str]) -> Tallies:
    """The part of ``tallies`` for ``apps``: what the same events filtered by app give (an event's identity does not
    depend on other apps' events), without another pass over them. Entries are shared, not copied (never mutated
    once counted)."""
    wanted = frozenset(apps)
    return {key: entry for key, entry in tallies.items() if key[2] in wanted}


def merge_tallies(into: Tallies, other: Tallies) -> None:
    for key, entry in other.items():
        mine = into.get(key)
        if mine is None:
            into[key] = entry
            continue
        mine[HITS] += entry[HITS]
        mine[ENFORCED] += entry[ENFORCED]
        mine[FIRST] = min(mine[FIRST], entry[FIRST])
        if entry[LAST] >= mine[LAST]:
            mine[LAST], mine[CLIENT] = entry[LAST], entry[CLIENT]
            mine[USER] = entry[USER] or mine[USER]
        mine[TIMES].extend(entry[TIMES])


def bursts(times: Iterable[int], window_us: int, enforced_hits: int | None = None) -> tuple[int, int]:
    """(bursts of all hits, bursts of enforced hits) over ``times`` (sorted ``ts_us * 2 + enforced``).

    ``enforced_hits``: how many of them are enforced, when the caller knows (``report_rows``: the entry's count).
    When all are (every denied hit after the effective date: the common case) or none, the enforced bursts are the
    bursts or none, without a second pass over the times."""
    seq = times if isinstance(times, list | array) else list(times)
    n = _burst_starts(seq, window_us)
    if enforced_hits is not None and enforced_hits in (0, len(seq)):
        return n, n if enforced_hits else 0
    enforced = list(itertools.compress(seq, map(operator.and_, seq, itertools.repeat(1))))
    return n, _burst_starts(enforced, window_us)


def _burst_starts(seq: list[int] | array[int], window_us: int) -> int:
    """The bursts of ``seq`` (sorted ``ts_us * 2 + enforced``): a hit starts one when it comes ``window_us`` or
    more after the first hit of the current burst. A hit that comes that long after the hit before it always does;
    only the others (found by C-level maps, not a Python step per hit) are followed in Python, so a report of 10M
    hits mostly spaced out costs a fraction of a loop over each."""
    n = len(seq)
    if n < 2:
        return n
    # Gaps of the encoded times under 2 * window + 2: every gap under the window in microseconds, and a few more
    # (the enforced bit), checked below on the times themselves.
    near = itertools.compress(
        range(1, n), map((2 * window_us + 2).__gt__, map(operator.sub, itertools.islice(seq, 1, None), seq))
    )
    absorbed, prev, start = 0, -1, 0
    for i in near:
        if i - 1 != prev:  # the hit before started its burst
            start = seq[i - 1] >> 1
        us = seq[i] >> 1
        if us - start < window_us:
            absorbed += 1
        else:
            start = us
        prev = i
    return n - absorbed


def report_rows(tallies: Tallies, window_us: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The report's ``clients`` and ``bypass`` rows, sorted by app, then most enforced attempts, attempts, client."""
    out: dict[str, list[dict[str, Any]]] = {CLIENTS: [], BYPASS: []}
    for (section, _key, app), entry in tallies.items():
        times = entry[TIMES]
        attempts, enforced_attempts = bursts(sorted(times), window_us, entry[ENFORCED])
        ident: Identity = entry[IDENT]
        out[section].append(
            {
                "client": entry[CLIENT] or None,
                "device": ident.device,
                "owner": ident.owner,
                "unit": ident.unit,
                "identity": ident.source,
                "mac": ident.mac,
                "device_id": ident.device_id,
                "user": entry[USER] or None,
                "app": app,
                "hits": entry[HITS],
                "attempts": attempts,
                "enforced_hits": entry[ENFORCED],
                "enforced_attempts": enforced_attempts,
                "first_seen": us_to_ts(entry[FIRST]),
                "last_seen": us_to_ts(entry[LAST]),
            }
        )
    for rows in out.values():
        rows.sort(
            key=lambda c: (c["app"], -c["enforced_attempts"], -c["attempts"], c["client"] or "", c["device"] or "")
        )
    return out[CLIENTS], out[BYPASS]


def tally_store_rows(
    rows: Iterable[tuple[Any, ...]], identifier: Identifier, controls: frozenset[str] = frozenset()
) -> Tallies:
    """Tallies from the store's ``(app, client, device_id, user, kind, ts_us, enforced)`` rows; ``controls``: the
    policy's control apps (bypass attempts whatever their stored ``labels.kind``, as ``report.scan_range`` counts)."""
    tallies: Tallies = {}
    for app, client, device_id, user, kind, ts_us, enforced in rows:
        ident = identifier.identify(client, ts_us, device_id, user)
        add_hit(tallies, ident, app, client, user, ts_us, bool(enforced), CONTROL_KIND if app in controls else kind)
    return tallies


class AnalystIdentity:
    """The analyst's identity sources: the inventory, the lease files followed as they change, the attempt window."""

    def __init__(self, leases: Iterable[str], window_s: float, inventory: Inventory) -> None:
        self.files = LeaseFiles([str(p) for p in leases], on_problem=self._log_problem)
        self._logged: set[str] = set()  # problems already logged: a missing file is found again on every refresh
        self.window_s = window_s
        self.inventory = inventory
        self._lock = threading.Lock()  # one refresh at a time (the gauges' thread and a request's may both ask)
        self._identifier = Identifier(inventory, None)
        self._book: LeaseBook | None = None
        self.version = 0  # one more each time the leases change (a key of the analyst's memoised views)
        self.refresh()

    def _log_problem(self, message: str) -> None:
        """A lease file that is missing, unreadable or not a lease file, or a malformed line: logged once, so that
        a wrong ``--leases`` path does not pass unnoticed while every device is named by its address."""
        if message in self._logged:
            return
        if len(self._logged) >= _LOGGED_MAX:
            self._logged.clear()
        self._logged.add(message)
        log.warning("leases: %s", message)

    def refresh(self) -> int:
        """Blocking: re-read the lease files that changed; the number of leases read."""
        if not self.files.paths:
            return 0
        with self._lock:
            book = self.files.book
            read = self.files.refresh()
            if self.files.book is not book:
                self.version += 1
            return read

    def identifier(self) -> Identifier:
        """An ``Identifier`` over the current lease book (a new one, with fresh caches, when the book changed)."""
        book = self.files.book
        if book is not self._book:
            self._identifier, self._book = Identifier(self.inventory, book), book
        return self._identifier

    @property
    def window_us(self) -> int:
        return int(self.window_s * 1_000_000)
