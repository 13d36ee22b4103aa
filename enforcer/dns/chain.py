"""The resolver chain, assembled in ONE function (``build_chain``), in execution order, with why each link is there.

    access control -> [RPZ feed] -> [hot answer] -> parse -> sinkhole -> cache -> upstream -> response policy
    -> (cache store) -> size limit

The result is ``handle(data, addr, tcp, via=None)``: bytes in, out the reply bytes (answered synchronously: blocked,
cached, refused, malformed), None (drop), an awaitable of bytes/None (forwarded upstream), or a list of messages
(a zone transfer from the RPZ feed, TCP only). Every link either answers or hands the query on unchanged.

- ``Request``: one parsed query on its way through the chain (the model: Blocky's ``model.Request`` passed through
  every resolver's ``Resolve``): the packet, its question, the client, the transport, when it arrived and the rule
  its name matched. Made once per query after parsing, so the links take one argument instead of eight.
- ``Via``: how an encrypted query arrived (transport ``dot``/``doh``/``doq`` and its ClientID); None for plain
  UDP/TCP, so the UDP hot path builds nothing extra. An encrypted listener has admitted its client before calling
  (enforcer/dns/encrypted.py: ``--allow`` or a known ClientID), so the chain skips ``--allow`` for it.
- ``PolicySource`` / ``ZoneFeed``: what the chain needs from the policy holder and from the RPZ feed (protocols, so
  tests pass a fixed policy and the hot path does not import dnspython).
- ``ChainParts``: the parts ``build_chain`` wires; ``admission(parts)``: who may open a TCP connection at all.
- ``zone_link(feed, outcome)``: the RPZ feed as a link; ``reparse(data, outcome)``: dnslib's reading of the packets
  the fast parser declines. Neither is on the hot path, so they live outside ``build_chain``.
- ``Blocked``: a packet blocked before, memoised on its bytes after the id (one memo, ``BLOCKED_MAX`` entries): its
  question and block rule (what parsing and matching those bytes gave), the rule's ``decide`` (from the policy's
  enforcement table) and, once served, its answer after the id (what the sinkhole built for them). A repeated
  blocked packet costs one look-up for all of them; whether the rule is enforced is still decided per query (it
  depends on the client and the time), and the hit event written per query.
- Inside ``build_chain``: ``block(req, rule, matched, action, outcome)`` is THE block step (is it enforced for this
  client now -> hit event and counter -> outcome -> sinkhole answer -> size limit), used by the sinkhole, by a cached
  response-policy verdict and by a fresh one; ``finish`` (size limit + latency) ends every answered query.

The synchronous links work on the wire format (wire.py, sinkhole templates, cached bytes) so that blocked and cached
answers cost a few microseconds; dnslib is used only for packets the fast parser declines. The links stay closures
over local names (a method call or attribute look-up per link is measurable at this rate: docs/performance.md).

A policy reload is noticed here by identity (``holder.policy is not current``): the first query after a swap
clears the cache, the blocked-packet memo and the sinkhole templates, so no answer decided under the old policy is
served afterwards.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from ..net import NetworkSet
from ..policy.matcher import Policy
from ..policy.model import Rule
from . import response_policy, wire
from .cache import Cache, Entry, cache_key
from .observe import Observer, RateLimitedLog
from .sinkhole import Sinkhole
from .upstream import Forwarder

Reply = bytes | None | Awaitable[bytes | None] | list[bytes]
Address = tuple[str, int] | tuple[str, int, int, int]

log = logging.getLogger("enforcer.dns")
BLOCKED_MAX = 20_000  # blocked packets memoised (question, rule, answer); ~400 bytes each
# Whatever a packet aimed at the RPZ feed makes go wrong is logged at most once a minute (a sender can repeat it).
ratelog = RateLimitedLog(log)


class PolicySource(Protocol):
    """Anything with a current ``.policy`` (``PolicyHolder``, or a fixed policy in tests)."""

    @property
    def policy(self) -> Policy: ...


class ZoneFeed(Protocol):
    """The RPZ feed as the chain sees it (``enforcer.rpz.feed.RpzFeed``)."""

    @property
    def origin_wire(self) -> bytes: ...  # the zone name in wire format, lower case

    @property
    def transfer_allow(self) -> NetworkSet: ...

    def answer(self, wire: bytes, client: str, tcp: bool) -> list[bytes] | None: ...


class Via(NamedTuple):
    """An encrypted query's transport (dot, doh, doq) and ClientID (None when the client gave none)."""

    transport: str
    client_id: str | None


class Handler(Protocol):
    def __call__(self, data: bytes, addr: Any, tcp: bool, via: Via | None = None, /) -> Reply: ...


class Request(NamedTuple):
    """One query in the chain, made once it is parsed and matched; read by every later link (and across the
    upstream await). A tuple, built with ``tuple.__new__`` on the hot path: half the cost of a class ``__init__``."""

    data: bytes  # the packet (the canonical rebuild when dnslib had to read it)
    q: wire.Question
    addr: Address | None
    host: str  # the client address as text ("" when unknown)
    tcp: bool
    t0: float  # perf_counter at arrival: the latency histogram
    rule: Rule | None  # what the question name matched at the sinkhole (allow, block, or None)
    via: Via | None  # encrypted transports only


class Blocked:
    """A packet blocked before (see the module docstring): kept in the memo keyed on its bytes after the id."""

    __slots__ = ("answer", "decide", "q", "rule")

    def __init__(self, q: wire.Question, rule: Rule, policy: Policy) -> None:
        self.q = q
        self.rule = rule
        # Whether the rule is enforced for a client at a time: its app's rule from the policy's one owner of it
        # (``Policy.enforcement``), found once per packet instead of once per query.
        self.decide = policy.enforcement.cutover(rule.app).decide
        self.answer: bytes | None = None  # the sinkhole's reply after the id, once the block was enforced


@dataclass
class ChainParts:
    holder: PolicySource
    acl: NetworkSet  # --allow
    sinkhole: Sinkhole
    cache: Cache
    forwarder: Forwarder
    observer: Observer
    feed: ZoneFeed | None = None  # with --rpz-zone
    nat64: tuple[ipaddress.IPv6Network, ...] = ()  # --nat64-prefix: judged besides the well-known 64:ff9b::/96
    query_log: Callable[[str, str, int], None] | None = None  # --query-log: QueryLog.record(host, name, qtype)


def admission(parts: ChainParts) -> Callable[[str], bool]:
    """Who may open a TCP connection at all: ``--allow`` clients and, with the RPZ feed, ``--transfer-allow`` ones."""
    allowed = parts.acl.contains_host
    if parts.feed is None:
        return allowed
    transfer = parts.feed.transfer_allow.contains_host
    return lambda host: allowed(host) or transfer(host)


def reparse(data: bytes, outcome: Callable[[str], None]) -> tuple[bytes, wire.Question | None, bytes | None]:
    """The packets the fast parser declined: dnslib rebuilds a canonical query ``(data, question, None)``, or the
    packet ends here: ``(data, None, reply)`` with a FORMERR/NOTIMP/BADVERS reply or None (dropped), counted."""
    norm = wire.normalize_query(data)
    if norm.data is not None:
        q = wire.parse_query(norm.data)
        if q is not None:
            return norm.data, q, None
    reply = norm.reply
    if norm.data is not None:  # rebuilt but still not parseable: treat as malformed, never silence
        reply = wire.error_reply(data, wire.RCODE_FORMERR)
    if reply is None:
        outcome("dropped")
    else:
        outcome("notimp" if reply[3] & 0x0F == wire.RCODE_NOTIMP else "formerr")
    return data, None, reply


def _nobody(host: str) -> bool:
    return False


def zone_link(feed: ZoneFeed, outcome: Callable[[str], None]) -> Callable[[bytes, str, bool], Reply | bool]:
    """The RPZ feed as a link: its answer, or False when the packet is not for the zone (the resolver goes on)."""

    def zone(data: bytes, host: str, tcp: bool) -> Reply | bool:
        try:
            replies = feed.answer(data, host, tcp)
        except Exception as exc:  # a packet must never cost a traceback per packet: count, log once in a while
            outcome("zone_bad")
            ratelog("zone-error", logging.WARNING, "RPZ feed: dropped a packet from %s it could not answer: %r",
                    host, exc)  # fmt: skip
            return None
        if replies is None:
            return False
        if not replies:
            outcome("zone_bad")  # the feed saw a packet it does not answer (a response, an odd opcode): dropped
            ratelog("zone-bad", logging.WARNING, "RPZ feed: dropped a packet from %s that is not a query (a response "
                    "or an opcode other than QUERY); counted in outcome=zone_bad", host)  # fmt: skip
            return None
        outcome("zone")
        return replies if tcp else replies[0]

    return zone


def build_chain(parts: ChainParts) -> Handler:  # noqa: C901 (the whole chain in one place, closures: docs/performance.md)
    """Assemble the resolver: each numbered step below is one link, in the order a query meets them."""
    holder, sinkhole, cache, forwarder, obs, feed = (
        parts.holder, parts.sinkhole, parts.cache, parts.forwarder, parts.observer, parts.feed
    )  # fmt: skip
    allowed = parts.acl.contains_host
    parse = wire.parse_query
    outcome = obs.outcome
    observe = obs.duration.observe
    hit = obs.hit
    clock = time.perf_counter
    now_us = time.time_ns
    current: list[Any] = [holder.policy, holder.policy.enforcement.decide]
    SERVFAIL = wire.RCODE_SERVFAIL
    zone_wire = feed.origin_wire if feed is not None else b""
    transfer_allowed = feed.transfer_allow.contains_host if feed is not None else _nobody
    zone = zone_link(feed, outcome) if feed is not None else None
    nat64 = parts.nat64
    clamp = cache.clamp
    hot_get, hot_reply = cache.hot_get, cache.hot_reply
    new_request = tuple.__new__
    qlog = parts.query_log

    # Packets blocked before (the bytes after the id -> ``Blocked``): parsing, matching and the sinkhole's answer of
    # the same bytes give the same again, so a repeated blocked query skips all three (docs/performance.md). Bounded,
    # and emptied with everything else decided under a policy when it is swapped.
    blocked_before: dict[bytes, Blocked] = {}

    def remember_blocked(packet: bytes, q: wire.Question, rule: Rule, policy: Policy) -> Blocked:
        if len(blocked_before) >= BLOCKED_MAX:
            blocked_before.clear()
        known = blocked_before[packet] = Blocked(q, rule, policy)
        return known

    def swapped(policy: Policy) -> None:
        # A reload swapped the policy: drop everything decided under the old one.
        cache.clear()
        sinkhole.clear()
        blocked_before.clear()
        current[0], current[1] = policy, policy.enforcement.decide

    def finish(req: Request, reply: bytes) -> bytes:
        # Last step for UDP: honour the client's EDNS payload size (512 without EDNS); TC makes it retry over TCP.
        q = req.q
        if not req.tcp and len(reply) > (q.edns or wire.DEFAULT_UDP_SIZE):
            outcome("truncated")
            reply = wire.truncate(reply, req.data, q)
        observe(clock() - req.t0)
        return reply

    def block(
        req: Request, policy: Policy, rule: Rule, matched: str, action: str, blocked: str, known: Blocked | None = None
    ) -> bytes | None:
        """THE block step: the blocked answer when ``rule`` is enforced for this client now, else None (the caller
        answers as if nothing matched). Either way the hit is counted and logged (a monitor hit when not enforced:
        before the effective date, or an exempt client). ``known``: the memo entry of a sinkhole block, which keeps
        the answer for the next time."""
        q = req.q
        at = now_us() // 1000
        if known is None:
            enforced, exempt = current[1](rule.app, req.host, at)  # policy.enforcement.decide
        else:
            enforced, exempt = known.decide(req.host, at)
        # unlisted: the question name matched no rule, only its answer did: a name the list misses (discovery).
        hit(policy, rule, matched, action, enforced, exempt, req.addr, q.key, q.qtype, req.rule is None, req.tcp,
            req.via, at)  # fmt: skip
        if not enforced:
            return None
        outcome(blocked)
        if known is None:
            return finish(req, sinkhole.answer(req.data, q, rule))
        if known.answer is None:
            known.answer = sinkhole.answer(req.data, q, rule)[2:]
        return finish(req, req.data[:2] + known.answer)

    def outsider(data: bytes, host: str, tcp: bool) -> Reply:
        """Step 0 for a client outside --allow: the RPZ feed when --transfer-allow admits it, else refused/dropped."""
        if zone is not None and transfer_allowed(host) and zone_wire in data.lower():
            answered = zone(data, host, tcp)
            if answered is not False:
                return answered  # type: ignore[return-value]
        refusal = wire.refusal(data)
        outcome("dropped" if refusal is None else "refused")
        return refusal

    def cached(req: Request, policy: Policy, ckey: Any, entry: Entry) -> bytes:
        """Step 4's answer from the cache. The packet is remembered for step 0c when its answer is the same for every
        client and time: no block rule matched its name (nor, by response policy, its answer) and it fits over UDP."""
        data, q, rule = req.data, req.q, req.rule
        if entry.rule is not None:
            # The cached answer was blocked by response policy: replay that verdict (and its event) per client.
            blocked = block(req, policy, entry.rule, q.key, "dns-response-block", "response_blocked")
            if blocked is not None:
                return blocked
        outcome("cached")
        if qlog is not None:
            qlog(req.host, q.key, q.qtype)
        reply = Cache.reply(entry, data, q)
        if (
            not req.tcp
            and qlog is None
            and entry.rule is None
            and (rule is None or rule.action == "allow")
            and (len(reply) <= (q.edns or wire.DEFAULT_UDP_SIZE))
        ):
            cache.remember(data, ckey, entry, q)
        return finish(req, reply)

    def handle(data: bytes, addr: Any, tcp: bool, via: Via | None = None, /) -> Reply:
        t0 = clock()
        host = addr[0] if addr else ""

        # 0. Access control, from the source address alone, before a byte of the packet is parsed: a client outside
        #    --allow learns nothing (not whether its packet was well formed, nor whether a name is blocked) and
        #    costs one memoised look-up; never an open resolver. A secondary allowed only by --transfer-allow may
        #    still reach the RPZ feed. (Over TCP such a client was already closed at accept, server.py; an encrypted
        #    listener, ``via``, admitted its client by --allow or by a known ClientID before calling.)
        if not allowed(host) and via is None:
            return outsider(data, host, tcp)

        # 0b. RPZ feed (only with --rpz-zone). Why before parsing: zone transfers (AXFR, IXFR with an SOA in the
        #    authority section, TSIG) are not queries for the resolver and have their own ACL (--transfer-allow); the
        #    byte search keeps the cost for every other query at one scan of a short packet.
        if zone is not None and zone_wire in data.lower():
            answered = zone(data, host, tcp)
            if answered is not False:
                return answered  # type: ignore[return-value]

        # 0c. Hot answers (UDP). Why before parsing: a packet identical after its id to one the cache answered before
        #    gets that entry's answer again; one dict look-up on its bytes (cache.py) replaces parse, sinkhole and cache
        #    key, about half the cost of a cached answer (docs/performance.md). Only answers of names that matched no
        #    block rule are remembered (step 4: a block rule may be enforced for one client and not another), and a
        #    policy swap empties the table with the cache, so the sinkhole's verdict still holds for each of them.
        policy = holder.policy
        if policy is not current[0]:
            swapped(policy)
        packet = data[2:]  # the bytes after the id: what steps 0c, 1 and 3 decide on
        if not tcp:
            h = hot_get(packet)
            if h is not None:
                reply = hot_reply(h, packet, data)
                if reply is not None:
                    outcome("cached")
                    observe(clock() - t0)
                    return reply

        seen = blocked_before.get(packet)  # blocked before: steps 1 and 3 (and the answer) for these very bytes
        if seen is None:
            # 1. Parse, on the wire. Why first: everything after needs the question; dnslib sees only the odd
            #    packets (compressed questions, unusual records), malformed ones end here as FORMERR or are dropped.
            q = parse(data)
            if q is None:
                data, q, reply = reparse(data, outcome)
                if q is None:
                    return reply
                packet = b""  # the question is dnslib's reading of other bytes: not memoised

            # 3. Sinkhole. Why before the cache and the upstream: a blocked name must never leave this host, and a
            #    policy reload must take effect on the very next query whatever the cache holds (checked above).
            rule = policy.match_key(q.key)
        else:
            q, rule = seen.q, seen.rule
        req = new_request(Request, (data, q, addr, host, tcp, t0, rule, via))
        if rule is not None and rule.action == "block":
            if seen is None and packet:
                seen = remember_blocked(packet, q, rule, policy)
            blocked = block(req, policy, rule, q.key, "dns-block", "blocked", seen)
            if blocked is not None:  # else a monitor hit (logged), resolved like any other name
                return blocked

        # 4. Cache. Why after the sinkhole and before the upstream: it only ever holds answers the upstream gave
        #    for names the sinkhole let through (or their response-policy verdict), and saves the round trip.
        ckey = cache_key(q, data)
        entry = cache.lookup(ckey)
        if entry is not None:
            return cached(req, policy, ckey, entry)

        return forward(req, ckey)  # 5. Upstream (asynchronous from here on).

    async def forward(req: Request, ckey: Any) -> bytes | None:
        data, q = req.data, req.q
        # EDNS Client Subnet is never forwarded: an answer scoped to one subnet would reach every client through a
        # cache keyed on the question alone (and the upstream learns no client subnets).
        reply = await forwarder.exchange(wire.strip_ecs(data, q), q.qend, req.host)
        if reply is None:
            # Every upstream failed or timed out: SERVFAIL within the timeout, never silence, with an EDE saying why
            # (22 or 23; read before any other await, so it is this query's: upstream.py).
            outcome("servfail")
            return finish(req, wire.question_reply(data, q, SERVFAIL, options=forwarder.last_failure))

        # 6. Response policy. Why after the upstream and before the cache store: only the answer shows CNAME
        #    disguises and banned addresses, and the verdict must be cached with it so a hit replays the block.
        #    A question name that matched an allow exception (such as WeCom) keeps it: its aliases are not judged
        #    again by name; addresses are still checked. (A monitor hit, not enforced, still has its aliases
        #    judged: they may belong to another app that is enforced.)
        policy = holder.policy
        if policy is not current[0]:
            swapped(policy)
        name_rule = req.rule
        try:
            found = response_policy.check(
                policy, reply, q.key, names=name_rule is None or name_rule.action != "allow", nat64=nat64
            )
        except wire.WireError:
            # An answer that cannot be checked is not served (it could hide a banned address): fail closed.
            outcome("servfail")
            return finish(req, wire.question_reply(data, q, SERVFAIL))
        # TTLs as the cache will honour them (top bit set: 0; --min/--max-cache-ttl), for this client too.
        reply = clamp(reply)
        if found is not None:
            rule, matched = found
            cache.store(ckey, reply, rule)
            blocked = block(req, policy, rule, matched, "dns-response-block", "response_blocked")
            if blocked is not None:
                return blocked
        else:
            cache.store(ckey, reply)
        outcome("forwarded")
        if qlog is not None:
            qlog(req.host, q.key, q.qtype)
        return finish(req, reply)

    return handle
