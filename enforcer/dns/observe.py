"""What the resolver tells the outside: outcome counters, blocked/monitored counters, latency histogram, hit events.

- ``Observer``: one per resolver, used only on the event-loop thread. Counters are ``LocalCounter`` (a dict
  increment per query); the latency histogram is ``FastHistogram`` (a bisect and a list increment per query, no
  lock), both read by the /metrics thread at scrape time. Hit events go to ``EventWriter.emit``, which appends to a
  bounded deque and returns: the file write happens on the writer's thread.
- ``FastHistogram``: a Prometheus histogram kept as plain bucket counts for one writer thread.
- ``HitLines``: the usual hit (a client address, no ClientID, not a discovery; any transport) rendered on the loop
  thread straight into its JSON line, for ``EventWriter.emit_line``: everything but the time, the event id and the
  source port is constant per (rule, action, enforced, exempt, transport) and per client address and question.
  The template is cut once from ``HitEvent.to_json`` itself and the values are written by its own encoders
  (enforcer/events.py ``cut_template``, ``json_text``, ``second_text``): the schema keeps one writer, this only
  memoises. The client and question parts are memoised (bounded: 40,000 entries, about 10 MB); per event: the
  time from integers (the second's text once a second, the microseconds from a table of 1,000 three-digit
  strings: a format spec costs more than the rest), the next id and one f-string, no event object. The writer
  thread then only joins, encodes and writes: it does not hold the GIL to serialise while queries wait (the
  blocked p99, docs/performance.md). Event ids are a random 64-bit prefix per process (16 hex digits) and a counter
  from 10^15 in 16 decimal digits: 32 hex digits, unique.
- ``DnsHitEvent``: the other hits (with a ClientID, ``device.id``, or a discovery): a ``HitEvent`` that is cheap to
  create (a tuple) and is filled in only when read, on the writer's thread (``to_json`` is ``HitEvent.to_json``).
- Discovery: a response-policy block of a question name that matched no rule (``unlisted``: only its CNAME target or
  an address did) is a name the list misses. Its hit event is the same event with ``event.dataset``
  ``enforcer.discovery`` and the chain in ``related.hosts``/``related.ip``; ``enforcer discover`` proposes it as a
  rule. It is a ``DnsHitEvent``: such answers are rare.
- ``RateLimitedLog``: at most one log line per key and interval, for anything a client can trigger per packet (a
  hostile sender must not be able to fill the disk with tracebacks); the lines held back are counted in the next one.
  Its clock is a parameter (``time.monotonic`` by default), so tests step it instead of sleeping.

An enforced hit is also one INFO line, at most one per app every 10 s (``enforcer/blocklog.py``, shared with the
proxy), so the service log shows that blocking happens.

Whether a hit is enforced is not decided here: the chain asks the policy's one owner of that rule
(``Policy.enforcement``, enforcer/policy/enforcement.py) and passes the answer in.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..blocklog import BLOCKS
from ..events import EventWriter, HitEvent, cut_template, json_text, second_text
from ..metrics import (
    BLOCKED_TOTAL,
    DNS_BUCKETS,
    DNS_QUERIES_TOTAL,
    DNS_QUERY_DURATION,
    MONITORED_TOTAL,
    SPECS,
    LocalCounter,
)
from ..policy.matcher import Policy
from ..policy.model import Match, Rule
from .wire import qtype_name

# One outcome per query (blocked ... dropped); "truncated" is counted in addition to the query's outcome, and the
# tcp_* outcomes count connections cut for misbehaving (they carry no query).
OUTCOMES = (
    "blocked",
    "response_blocked",
    "cached",
    "forwarded",
    "servfail",
    "refused",
    "formerr",
    "notimp",
    "dropped",
    "truncated",
    "zone",  # answered by the RPZ feed (SOA, AXFR, IXFR for --rpz-zone)
    "zone_bad",  # a packet aimed at the RPZ feed that it cannot answer (a response, odd opcode, unparsable): dropped
    "tcp_rejected",  # the global --tcp-max-connections cap was full
    "tcp_source_limit",  # the client's source (address, IPv6 /64) already holds --tcp-max-per-source connections
    "tcp_refused",  # a source outside --allow (and --transfer-allow): closed at accept
    "tcp_timeout",
    "tcp_bad_frame",
)


class RateLimitedLog:
    """``log(key, level, msg, *args)``: at most one line per ``key`` every ``interval`` seconds.

    Keys are fixed strings chosen by the caller (bounded); what was held back is counted in the next line written.
    """

    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._state: dict[str, tuple[float, int]] = {}

    def __call__(self, key: str, level: int, msg: str, *args: Any, exc_info: bool = False) -> bool:
        """Log now (True) or count the line as suppressed (False)."""
        now = self.clock()
        last, held = self._state.get(key, (-math.inf, 0))
        if now - last < self.interval:
            self._state[key] = (last, held + 1)
            return False
        self._state[key] = (now, 0)
        if held:
            msg += " (%d similar line(s) held back in the last %g s)"
            args = (*args, held, self.interval)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True


class FastHistogram(Collector):
    """Histogram with fixed buckets, no labels, updated by one thread without a lock."""

    def __init__(self, name: str, registry: CollectorRegistry | None = None) -> None:
        self.spec = SPECS[name]
        self.bounds = list(self.spec.buckets or DNS_BUCKETS)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        if registry is not None:
            registry.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Iterator[Metric]:
        counts = list(self.counts)
        buckets: list[tuple[str, float]] = []
        acc = 0
        for bound, c in zip(self.bounds, counts, strict=False):
            acc += c
            buckets.append((repr(float(bound)), acc))
        acc += counts[-1]
        buckets.append(("+Inf", acc))
        yield HistogramMetricFamily(self.spec.name, self.spec.help, buckets=buckets, sum_value=self.sum)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.spec.name, self.spec.help, buckets=[("+Inf", 0)], sum_value=0)


_FIELDS = tuple(f.name for f in dataclasses.fields(HitEvent))
# Placeholder values of the fields a template leaves open, and their JSON text in the template event's line.
_SENTINEL_TIME = datetime(2000, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
_SENTINELS = ('"2000-01-02T03:04:05.678901Z"', '"@@id@@"', '"@@ip@@"', '"@@port@@"', '"@@qname@@"', '"@@qtype@@"')


def _json_template(
    policy: Policy, rule: Rule, action: str, enforced: bool, exempt: bool, transport: str
) -> tuple[str, ...]:
    """The event's JSON cut into 7 fixed parts around timestamp, id, source ip, port, question name and type, by
    ``HitEvent.to_json`` itself (enforcer/events.py ``cut_template``)."""
    sample = HitEvent.from_match(
        Match(rule, policy.apps[rule.app], ""), action=action, component="dns", version=policy.fingerprint,
        enforced=enforced, exempt=exempt, at=_SENTINEL_TIME, id="@@id@@", source_ip="@@ip@@",
        source_port="@@port@@", dns_question_name="@@qname@@", dns_question_type="@@qtype@@",
        dns_transport=transport,
    )  # fmt: skip
    return cut_template(sample, _SENTINELS)


def _datetime(t: float) -> datetime:
    """The event time: integer microseconds (``at_us``) exactly, or a float ``time.time()``."""
    return _EPOCH + timedelta(microseconds=t) if type(t) is int else datetime.fromtimestamp(t, UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _is_address(text: str) -> bool:
    return ":" in text or text.replace(".", "").isdigit()


class DnsHitEvent(HitEvent):
    """A resolver hit event: created from a few references, serialised on the writer thread."""

    __slots__ = ("_lazy", "_via")

    def __init__(
        self,
        policy: Policy,
        rule: Rule,
        matched: str,
        action: str,
        enforced: bool,
        exempt: bool,
        addr: Any,
        qname: str,
        qtype: int,
        unlisted: bool = False,
        transport: str = "udp",
        device_id: str | None = None,
        at_us: int | None = None,  # when, in integer microseconds (the chain has read the clock already)
    ) -> None:  # deliberately does not call HitEvent.__init__: fields are filled on first read
        t = at_us if at_us is not None else time.time_ns() // 1000
        self._lazy = (policy, rule, matched, action, enforced, exempt, addr, qname, qtype, t,
                      f"{random.getrandbits(128):032x}", unlisted)  # fmt: skip
        self._via = (transport, device_id)

    def _materialize(self) -> None:
        policy, rule, matched, action, enforced, exempt, addr, qname, qtype, t, event_id, unlisted = self._lazy
        extra: dict[str, Any] = {}
        if unlisted:
            extra["dataset"] = "enforcer.discovery"
            extra["related_hosts"] = [qname] if _is_address(matched) else [qname, matched]
            if _is_address(matched):
                extra["related_ip"] = [matched]
        full = HitEvent.from_match(
            Match(rule, policy.apps[rule.app], matched), action=action, component="dns", version=policy.fingerprint,
            enforced=enforced, exempt=exempt, at=_datetime(t), id=event_id,
            source_ip=addr[0] if addr else None, source_port=addr[1] if addr else None,
            dns_question_name=qname, dns_question_type=qtype_name(qtype), **extra,
            dns_transport=self._via[0], device_id=self._via[1],
        )  # fmt: skip
        for name in _FIELDS:
            object.__setattr__(self, name, getattr(full, name))

    def __getattr__(self, name: str) -> Any:
        # Only reached for a field not filled in yet (slots raise AttributeError until then).
        if name in _FIELDS:
            self._materialize()
            return object.__getattribute__(self, name)
        raise AttributeError(name)

    def to_ecs(self) -> dict[str, Any]:
        self._materialize()
        return HitEvent.to_ecs(self)


_LINES_MAX = 40_000  # memoised client and question parts of HitLines, all templates together (~250 bytes each)
_DIGITS = tuple(f"{i:03d}" for i in range(1000))  # the microseconds of a time in two table look-ups, no formatting
_FIRST_ID = 10**15  # event id counters start here: always 16 digits (decimal digits are hex digits)


class _LineTemplate:
    """One kind of hit (rule, action, enforced, exempt, transport): its event template of ``HitLines``, cut around the
    time, id, source and question, the memoised JSON of the sources and questions seen with it, and its counter
    labels (the ``Observer`` counts every hit by them: one look-up finds both)."""

    __slots__ = ("head", "labels", "log", "mid", "parts", "questions", "rule", "sources")

    def __init__(self, rule: Rule, action: str, parts: tuple[str, ...], prefix: str) -> None:
        self.rule = rule
        self.labels = ("dns", rule.app, rule.category or "", action)  # enforcer_blocked_total/monitored_total
        self.log: list[float] | None = None  # the app's block-line state (enforcer/blocklog.py BlockLog.state)
        self.parts = parts
        self.head = f'{parts[0]}"'  # ... "@timestamp":"
        self.mid = f'Z"{parts[1]}"{prefix}'  # the time's Z, "<rest of the head> "id":"<prefix>
        self.sources: dict[str, str] = {}  # client address -> '"<...>"ip":"<ip>"<...>"port":'
        self.questions: dict[tuple[str, int], str] = {}  # (qname, qtype) -> ',"dns":{...}}' to the end


class HitLines:
    """The JSON line of an ordinary resolver hit, from memoised parts (see the module docstring)."""

    def __init__(self) -> None:
        self.templates: dict[tuple[Any, ...], _LineTemplate] = {}
        self.size = 0  # entries in all the templates' memos
        self.prefix = f"{random.getrandbits(64):016x}"  # per process: ids of several workers never collide
        self.count = _FIRST_ID
        self.second_us = 0  # the second of the last event's time, in microseconds, and its text (second_text)
        self.second = second_text(0)

    def template(
        self, policy: Policy, rule: Rule, action: str, enforced: bool, exempt: bool, transport: str
    ) -> _LineTemplate:
        """The template of this kind of hit (memoised; ``Observer.hit`` looks it up inline, the same way)."""
        # id(rule) hashes faster than the frozen Rule (a hash of all its fields); the template keeps the rule itself,
        # so a freed rule whose id was reused is never mistaken for it.
        key = (id(rule), policy.fingerprint, action, enforced, exempt, transport)
        t = self.templates.get(key)
        if t is None or t.rule is not rule:
            parts = _json_template(policy, rule, action, enforced, exempt, transport)
            t = self.templates[key] = _LineTemplate(rule, action, parts, self.prefix)
        return t

    def line(
        self,
        policy: Policy,
        rule: Rule,
        action: str,
        enforced: bool,
        exempt: bool,
        transport: str,
        addr: tuple[str, int] | tuple[str, int, int, int],
        qname: str,
        qtype: int,
        at_us: int,
    ) -> str:
        """Exactly ``HitEvent.to_json()`` of this hit at ``at_us`` (integer microseconds) with the next event id."""
        return self.render(self.template(policy, rule, action, enforced, exempt, transport), addr, qname, qtype, at_us)

    def render(
        self, t: _LineTemplate, addr: tuple[str, int] | tuple[str, int, int, int], qname: str, qtype: int, at_us: int
    ) -> str:
        """``line`` of a hit of template ``t``."""
        host = addr[0]
        source = t.sources.get(host)
        if source is None:
            p = t.parts
            source = self._remember(t.sources, host, f'"{p[2]}{json_text(str(host))}{p[3]}')
        question = t.questions.get((qname, qtype))
        if question is None:
            p = t.parts
            text = f"{p[4]}{json_text(qname)}{p[5]}{json_text(qtype_name(qtype))}{p[6]}"
            question = self._remember(t.questions, (qname, qtype), text)
        us = at_us - self.second_us
        if us >= 1_000_000 or us < 0:  # a new second: its text once (events.second_text), then integers only
            self.second_us = at_us - at_us % 1_000_000
            self.second = second_text(at_us // 1_000_000)
            us = at_us - self.second_us
        self.count = n = self.count + 1
        return f"{t.head}{self.second}{_DIGITS[us // 1000]}{_DIGITS[us % 1000]}{t.mid}{n}{source}{addr[1]}{question}"

    def _remember(self, table: dict[Any, str], key: Any, value: str) -> str:
        if self.size >= _LINES_MAX:  # bounded: start again (the current template keeps working for this event)
            self.templates = {}
            self.size = 0
        self.size += 1
        table[key] = value
        return value


block_line = BLOCKS.blocked
block_clock = BLOCKS.clock


class Observer:
    def __init__(self, registry: CollectorRegistry | None, writer: EventWriter | None) -> None:
        self.queries = LocalCounter(DNS_QUERIES_TOTAL, registry)
        self.blocked_total = LocalCounter(BLOCKED_TOTAL, registry)
        self.monitored_total = LocalCounter(MONITORED_TOTAL, registry)
        self.duration = FastHistogram(DNS_QUERY_DURATION, registry)
        self.writer = writer if writer is not None and writer.path is not None else None
        for outcome in OUTCOMES:  # present from the first scrape, so rate() works from zero
            self.queries.values[(outcome,)] = 0
        self._labels = {o: (o,) for o in OUTCOMES}
        self._outcomes = self.queries.values
        self._blocked, self._monitored = self.blocked_total.values, self.monitored_total.values
        self.lines = HitLines()

    def outcome(self, outcome: str) -> None:
        key = self._labels[outcome]
        values = self._outcomes
        values[key] = values[key] + 1  # LocalCounter.inc inlined: once per query (every outcome is preset to 0)

    def hit(
        self,
        policy: Policy,
        rule: Rule,
        matched: str,
        action: str,
        enforced: bool,
        exempt: bool,
        addr: tuple[str, int] | tuple[str, int, int, int] | None,
        qname: str,
        qtype: int,
        unlisted: bool = False,
        tcp: bool = False,
        via: Any = None,  # chain.Via: an encrypted query's transport and ClientID
        at_us: int | None = None,  # when (integer microseconds), if the caller has read the clock
    ) -> None:
        """Count and log one hit. Called once per blocked query: the chain passes everything by position (cheaper than
        by keyword at this rate); the names are kept for other callers."""
        transport, device = (via[0], via[1]) if via is not None else ("tcp" if tcp else "udp", None)
        # The kind of hit: its counter labels and event template in one look-up (HitLines.template, inlined).
        lines = self.lines
        t = lines.templates.get((id(rule), policy.fingerprint, action, enforced, exempt, transport))
        if t is None or t.rule is not rule:
            t = lines.template(policy, rule, action, enforced, exempt, transport)
        counts = self._blocked if enforced else self._monitored
        counts[t.labels] = counts.get(t.labels, 0) + 1  # LocalCounter.inc inlined
        if enforced:  # at most one INFO line per app every 10 s (enforcer/blocklog.py)
            held = t.log
            if held is not None and block_clock() < held[0]:  # not due: counted for the next line, no call
                held[1] += 1
            else:
                block_line("dns", rule.app, rule.id, rule.source, qname, addr[0] if addr else None)
                t.log = BLOCKS.state("dns", rule.app)
        if self.writer is None:
            return
        # Only a response-policy block can be a discovery (a sinkhole block matched the name itself).
        unlisted = unlisted and action == "dns-response-block"
        if device is None and addr and not unlisted:  # the usual hit: its line from memoised parts, no event object
            at = time.time_ns() // 1000 if at_us is None else at_us
            self.writer.emit_line(lines.render(t, addr, qname, qtype, at))
            return
        self.writer.emit(DnsHitEvent(policy, rule, matched, action, enforced, exempt, addr, qname, qtype, unlisted,
                                     transport, device, at_us))  # fmt: skip
