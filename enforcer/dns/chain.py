"""The resolver chain, assembled in ONE function (``build_chain``), in execution order, with why each link is there.

    access control -> [RPZ feed] -> parse -> sinkhole -> cache -> upstream -> response policy -> (cache store)
    -> size limit

The result is ``handle(data, addr, tcp)``: bytes in, and out either the reply bytes (answered synchronously: blocked,
cached, refused, malformed), None (drop), an awaitable of bytes/None (forwarded upstream), or a list of messages
(a zone transfer from the RPZ feed, TCP only). Every link either
answers or hands the query on unchanged. The synchronous links work on the wire format (wire.py, sinkhole
templates, cached bytes) so that blocked and cached answers cost a few microseconds; dnslib is used only for
packets the fast parser declines.

A policy reload is noticed here by identity (``holder.policy is not current``): the first query after a swap
clears the cache and the sinkhole templates, so no answer decided under the old policy is served afterwards.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..policy.matcher import Policy
from ..policy.model import Rule
from . import response_policy, wire
from .cache import Cache, cache_key
from .observe import Enforcement, Observer, RateLimitedLog
from .sinkhole import Sinkhole
from .upstream import Forwarder

Reply = bytes | None | Awaitable[bytes | None] | list[bytes]
Handler = Callable[[bytes, Any, bool], Reply]

log = logging.getLogger("enforcer.dns")
# Whatever a packet aimed at the RPZ feed makes go wrong is logged at most once a minute (a sender can repeat it).
ratelog = RateLimitedLog(log)


class PolicySource:
    """Anything with a ``.policy`` attribute (``PolicyHolder``, or a fixed policy in tests)."""

    policy: Policy


class Acl:
    """``--allow`` CIDRs; verdicts are memoised per client address (bounded)."""

    def __init__(self, cidrs: list[str] | tuple[str, ...]) -> None:
        self.nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self._memo: dict[str, bool] = {}

    def allowed(self, host: str) -> bool:
        ok = self._memo.get(host)
        if ok is not None:
            return ok
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            ok = False
        else:
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            ok = any(addr.version == n.version and addr in n for n in self.nets)
        if len(self._memo) >= 65_536:
            self._memo.clear()
        self._memo[host] = ok
        return ok


@dataclass
class ChainParts:
    holder: Any  # PolicySource
    acl: Acl
    sinkhole: Sinkhole
    cache: Cache
    forwarder: Forwarder
    observer: Observer
    feed: Any = None  # enforcer.rpz.feed.RpzFeed when --rpz-zone is set
    nat64: tuple[ipaddress.IPv6Network, ...] = ()  # --nat64-prefix: judged besides the well-known 64:ff9b::/96


def admission(parts: ChainParts) -> Callable[[str], bool]:
    """Who may open a TCP connection at all: ``--allow`` clients and, with the RPZ feed, ``--transfer-allow`` ones."""
    acl = parts.acl
    if parts.feed is None:
        return acl.allowed
    transfer = Acl([str(n) for n in parts.feed.transfer_allow])
    return lambda host: acl.allowed(host) or transfer.allowed(host)


def build_chain(parts: ChainParts) -> Handler:
    """Assemble the resolver: each numbered step below is one link, in the order a query meets them."""
    holder, acl, sinkhole, cache, forwarder, obs = (
        parts.holder,
        parts.acl,
        parts.sinkhole,
        parts.cache,
        parts.forwarder,
        parts.observer,
    )
    parse = wire.parse_query
    outcome = obs.outcome
    observe = obs.duration.observe
    clock = time.perf_counter
    current: list[Any] = [holder.policy, Enforcement(holder.policy)]
    SERVFAIL = wire.RCODE_SERVFAIL
    feed = parts.feed
    zone_wire = feed.origin.to_wire().lower() if feed is not None else b""
    transfer_acl = Acl([str(n) for n in feed.transfer_allow]) if feed is not None else None
    nat64 = parts.nat64
    clamp = cache.clamp

    def policy_now() -> tuple[Policy, Enforcement]:
        policy = holder.policy
        if policy is not current[0]:
            # A reload swapped the policy: drop everything decided under the old one.
            cache.clear()
            sinkhole.clear()
            current[0], current[1] = policy, Enforcement(policy)
        return current[0], current[1]

    def fit(reply: bytes, data: bytes, q: wire.Question, tcp: bool) -> bytes:
        # Last step for UDP: honour the client's EDNS payload size (512 without EDNS); TC makes it retry over TCP.
        if not tcp and len(reply) > (q.edns or wire.DEFAULT_UDP_SIZE):
            outcome("truncated")
            return wire.truncate(reply, data, q)
        return reply

    def zone(data: bytes, host: str, tcp: bool) -> Reply | bool:
        """The feed's answer; False when the packet is not for the zone (the resolver goes on with it)."""
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

    def handle(data: bytes, addr: Any, tcp: bool) -> Reply:
        t0 = clock()
        host = addr[0] if addr else ""

        # 0. Access control, from the source address alone, before a byte of the packet is parsed: a client outside
        #    --allow learns nothing (not whether its packet was well formed, nor whether a name is blocked) and
        #    costs one memoised look-up; never an open resolver. A secondary allowed only by --transfer-allow may
        #    still reach the RPZ feed. (Over TCP such a client was already closed at accept, server.py.)
        if not acl.allowed(host):
            if transfer_acl is not None and transfer_acl.allowed(host) and zone_wire in data.lower():
                answered = zone(data, host, tcp)
                if answered is not False:
                    return answered  # type: ignore[return-value]
            refusal = wire.refusal(data)
            outcome("dropped" if refusal is None else "refused")
            return refusal

        # 0b. RPZ feed (only with --rpz-zone). Why before parsing: zone transfers (AXFR, IXFR with an SOA in the
        #    authority section, TSIG) are not queries for the resolver and have their own ACL (--transfer-allow); the
        #    byte search keeps the cost for every other query at one scan of a short packet.
        if feed is not None and zone_wire in data.lower():
            answered = zone(data, host, tcp)
            if answered is not False:
                return answered  # type: ignore[return-value]

        # 1. Parse, on the wire. Why first: everything after needs the question; dnslib sees only the odd packets
        #    (compressed questions, unusual records), malformed ones end here as FORMERR or are dropped.
        q = parse(data)
        if q is None:
            norm = wire.normalize_query(data)
            if norm.data is None or (q := parse(norm.data)) is None:
                reply = norm.reply
                if norm.data is not None:  # rebuilt but still not parseable: treat as malformed, never silence
                    reply = wire.error_reply(data, wire.RCODE_FORMERR)
                if reply is None:
                    outcome("dropped")
                else:
                    outcome("notimp" if reply[3] & 0x0F == wire.RCODE_NOTIMP else "formerr")
                return reply
            data = norm.data

        # 3. Sinkhole. Why before the cache and the upstream: a blocked name must never leave this host, and a
        #    policy reload must take effect on the very next query whatever the cache holds.
        policy, enforcement = policy_now()
        rule = policy.match_key(q.key)
        if rule is not None and rule.action == "block":
            enforced, exempt = enforcement.enforced(rule, host)
            obs.hit(
                policy, rule, q.key, action="dns-block", enforced=enforced, exempt=exempt, addr=addr,
                qname=q.key, qtype=q.qtype,
            )  # fmt: skip
            if enforced:
                outcome("blocked")
                reply = fit(sinkhole.answer(data, q, rule), data, q, tcp)
                observe(clock() - t0)
                return reply
            # Not enforced (before the effective date, or an exempt client): logged as a monitor hit, then
            # resolved like any other name.

        # 4. Cache. Why after the sinkhole and before the upstream: it only ever holds answers the upstream gave
        #    for names the sinkhole let through (or their response-policy verdict), and saves the round trip.
        ckey = cache_key(q, data)
        entry = cache.lookup(ckey)
        if entry is not None:
            if entry.rule is None:
                outcome("cached")
                reply = fit(Cache.reply(entry, data, q), data, q, tcp)
                observe(clock() - t0)
                return reply
            # The cached answer was blocked by response policy: replay that verdict (and its event) per client.
            enforced, exempt = enforcement.enforced(entry.rule, host)
            obs.hit(
                policy, entry.rule, q.key, action="dns-response-block", enforced=enforced, exempt=exempt,
                addr=addr, qname=q.key, qtype=q.qtype,
            )  # fmt: skip
            if enforced:
                outcome("response_blocked")
                reply = fit(sinkhole.answer(data, q, entry.rule), data, q, tcp)
            else:
                outcome("cached")
                reply = fit(Cache.reply(entry, data, q), data, q, tcp)
            observe(clock() - t0)
            return reply

        # 5. Upstream (asynchronous from here on).
        return forward(data, q, ckey, addr, host, rule, t0, tcp)

    async def forward(
        data: bytes, q: wire.Question, ckey: Any, addr: Any, host: str, name_rule: Rule | None, t0: float, tcp: bool
    ) -> bytes | None:
        # EDNS Client Subnet is never forwarded: an answer scoped to one subnet would reach every client through a
        # cache keyed on the question alone (and the upstream learns no client subnets).
        reply = await forwarder.exchange(wire.strip_ecs(data, q))
        if reply is None:
            # Every upstream failed or timed out: SERVFAIL within the timeout, never silence.
            outcome("servfail")
            observe(clock() - t0)
            return wire.question_reply(data, q, SERVFAIL)

        # 6. Response policy. Why after the upstream and before the cache store: only the answer shows CNAME
        #    disguises and banned addresses, and the verdict must be cached with it so a hit replays the block.
        #    A question name that matched an allow exception (such as WeCom) keeps it: its aliases are not judged
        #    again by name; addresses are still checked.
        policy, enforcement = policy_now()
        try:
            # Names are skipped only after an allow exception; a monitor hit (not enforced) still has its aliases
            # judged, since they may belong to another app that is enforced.
            hit = response_policy.check(
                policy, reply, q.key, names=name_rule is None or name_rule.action != "allow", nat64=nat64
            )
        except wire.WireError:
            # An answer that cannot be checked is not served (it could hide a banned address): fail closed.
            outcome("servfail")
            observe(clock() - t0)
            return wire.question_reply(data, q, SERVFAIL)
        # TTLs as the cache will honour them (top bit set: 0; --min/--max-cache-ttl), for this client too.
        reply = clamp(reply)
        if hit is None:
            cache.store(ckey, reply)
            outcome("forwarded")
        else:
            rule, matched = hit
            cache.store(ckey, reply, rule)
            enforced, exempt = enforcement.enforced(rule, host)
            obs.hit(
                policy, rule, matched, action="dns-response-block", enforced=enforced, exempt=exempt, addr=addr,
                qname=q.key, qtype=q.qtype,
            )  # fmt: skip
            if enforced:
                outcome("response_blocked")
                reply = sinkhole.answer(data, q, rule)
            else:
                outcome("forwarded")
        observe(clock() - t0)
        return fit(reply, data, q, tcp)

    return handle
