"""The resolver chain in-process, for tests that drive it without starting ``enforcer dns`` and without sleeping.

``ChainHarness(upstream_address(es), blocklists)`` builds the real chain (``build_chain``: the real policy, sinkhole,
cache, forwarder to a local fake upstream, observer without an event file) on its own event loop; ``run(data, tcp,
client)`` sends one packet through ``handle`` and returns the reply bytes (awaiting the upstream when the chain
forwards). Time is a ``FakeClock`` shared by the cache and the forwarder's health: ``clock.advance(seconds)`` ages
cached answers and backoffs at once. ``outcomes()`` reads the observer's counters; ``query(name, qtype, ...)`` builds
a query with dnspython and parses the reply.

Fixtures (tests/dns/conftest.py): ``chain`` (shipped blocklists, the module's fake upstream). The fuzz test
(test_dns_fuzz.py) drives the same harness.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import dns.message

from enforcer.dns import DEFAULT_ALLOW
from enforcer.dns.cache import Cache
from enforcer.dns.chain import ChainParts, build_chain
from enforcer.dns.observe import Observer
from enforcer.dns.sinkhole import Sinkhole, parse_mode
from enforcer.dns.upstream import Forwarder, parse_upstream
from enforcer.net import NetworkSet
from enforcer.policy import load_policy
from enforcer.policy.matcher import Policy


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Holder:
    """A fixed policy, swappable by assignment (what ``PolicyHolder`` does on a reload)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy


class ChainHarness:
    def __init__(
        self,
        upstream: str | list[str],
        blocklists: Path | list[Path],
        *,
        mode: str = "null",
        block_ttl: int = 60,
        cache: Cache | None = None,
        timeout: float = 0.5,
        allow: tuple[str, ...] = DEFAULT_ALLOW,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.cache = cache if cache is not None else Cache(1000, clock=self.clock)
        self.cache.clock = self.clock
        upstreams = [upstream] if isinstance(upstream, str) else upstream
        self.forwarder = Forwarder([parse_upstream(u) for u in upstreams], timeout=timeout, clock=self.clock)
        self.observer = Observer(None, None)
        self.holder = Holder(load_policy(blocklists if isinstance(blocklists, list) else [blocklists]))
        self.parts = ChainParts(self.holder, NetworkSet(allow), Sinkhole(parse_mode(mode), block_ttl), self.cache,
                                self.forwarder, self.observer)  # fmt: skip
        self.handle = build_chain(self.parts)

    def run(self, data: bytes, tcp: bool = False, client: str = "127.0.0.1") -> Any:
        async def go() -> Any:
            out: Any = self.handle(data, (client, 40000), tcp)
            if inspect.isawaitable(out):
                out = await out
            return out

        return self.loop.run_until_complete(go())

    def query(
        self, name: str, qtype: str = "A", *, tcp: bool = False, client: str = "127.0.0.1", edns: int | bool = False
    ) -> dns.message.Message:
        """Like ``DnsProcess.query`` (dnspython's query and reading of the reply), through ``handle``."""
        q = dns.message.make_query(name, qtype, use_edns=edns, payload=1232)
        reply = self.run(q.to_wire(), tcp, client)
        assert type(reply) is bytes, reply
        return dns.message.from_wire(reply)

    def outcomes(self) -> dict[str, int]:
        return {labels[0]: n for labels, n in self.observer.queries.values.items() if n}

    def close(self) -> None:
        self.loop.run_until_complete(self.forwarder.close())
        self.loop.close()
