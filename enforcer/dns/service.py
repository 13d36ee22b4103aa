"""The resolver as a service: settings, policy holder, event writer, metrics and listeners wired together.

Embedding (for a program that runs the resolver inside its own asyncio loop; ``enforcer serve`` runs ``enforcer dns``
as a child process instead)::

    settings = DnsSettings.from_args(args)          # checks every value; ValueError (one line) on a bad one
    await run_resolver(settings, stop)               # serves until ``stop`` (an asyncio.Event) is set

or, for finer control, ``r = Resolver(settings, registry=..., writer=...)``; ``addrs = await r.start()`` (binds,
returns the listen addresses as ``HOST:PORT``); ``await r.stop()`` (closes listeners, flushes events). Pass a shared
``CollectorRegistry`` / ``EventWriter`` to share them with other components (the resolver then neither serves
``/metrics`` itself unless ``settings.metrics`` is set, nor closes a writer it did not create).

Inside another program, start it in the running loop (``asyncio.create_task(run_resolver(settings, stop))``);
the process owner decides about uvloop, ``sys.setswitchinterval`` and GC tuning (see what ``enforcer dns`` does in
process.py: 0.5 ms switch interval, higher GC thresholds, ``gc.freeze()`` once the policy is loaded).
Several worker processes can share the listen addresses with ``DnsSettings(reuse_port=True)`` (SO_REUSEPORT).

- ``DnsSettings``: the settings; ``from_args`` checks argparse values into them (errors are one line).
  ``DnsSettings(...)`` built directly is taken as given, not checked.
- ``Resolver``: owns the ``PolicyHolder`` (file watch + SIGHUP reload), the cache, the forwarder, the observer
  (counters, histogram, hit events) and one ``Listener`` (UDP + TCP) per address; with ``--dot/--doh/--doq``
  the encrypted listeners (enforcer/dns/encrypted_listeners.py) on the same chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from ..config import parse_number, parse_size
from ..events import EventWriter
from ..metrics import (
    DNS_CACHE_ENTRIES,
    DNS_TCP_CONNECTIONS,
    DNS_UPSTREAM_ERRORS_TOTAL,
    DNS_UPSTREAM_HEALTHY,
    POLICY_INFO,
    POLICY_LAST_RELOAD,
    POLICY_RELOADS_TOTAL,
    POLICY_RULES,
    Metrics,
    serve_metrics,
)
from ..net import NetworkSet, parse_network, split_host_port
from ..policy.addresses import check_nat64_prefix
from ..policy.reloader import PolicyHolder, parse_required_apps
from . import DEFAULT_ALLOW
from .cache import Cache
from .chain import ChainParts, admission, build_chain
from .encrypted_listeners import EncryptedListeners, EncryptedSettings, encrypted_settings
from .observe import Observer
from .server import Listener, TcpLimits
from .sinkhole import Mode, Sinkhole, parse_mode
from .upstream import Forwarder, UpstreamSpec, parse_upstream, resolv_conf_nameservers

if TYPE_CHECKING:
    from ..rpz.feed import RpzFeed  # imported when --rpz-zone is set: dnspython only for RPZ users

log = logging.getLogger("enforcer.dns")

DNS_METRICS = (
    DNS_UPSTREAM_ERRORS_TOTAL,
    DNS_UPSTREAM_HEALTHY,
    DNS_CACHE_ENTRIES,
    DNS_TCP_CONNECTIONS,
    POLICY_RULES,
    POLICY_RELOADS_TOTAL,
    POLICY_INFO,
    POLICY_LAST_RELOAD,
)


@dataclass
class DnsSettings:
    blocklist: list[str]
    upstreams: list[UpstreamSpec]
    listen: list[tuple[str, int]] = field(default_factory=lambda: [("127.0.0.1", 5353)])
    mode: Mode = field(default_factory=lambda: parse_mode("null"))
    block_ttl: int = 60
    events: str | None = None
    metrics: str | None = None
    allow: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOW))
    timeout: float = 2.0
    cache_size: int = 100_000
    cache_bytes: int = 64 * 1024 * 1024
    tcp_max_connections: int = 512
    tcp_max_per_source: int = 32
    tcp_initial_timeout: float = 2.0
    tcp_idle_timeout: float = 10.0
    nat64_prefixes: tuple[ipaddress.IPv6Network, ...] = ()
    min_cache_ttl: int = 0
    max_cache_ttl: int = 86_400
    reuse_port: bool = False  # for SO_REUSEPORT workers sharing the listen addresses
    watch_interval: float = 1.0
    # RPZ feed (--rpz-zone): the policy served to BIND/Unbound secondaries by AXFR/IXFR, NOTIFY on change.
    rpz_zone: str | None = None
    transfer_allow: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    notify: list[tuple[str, int]] = field(default_factory=list)
    tsig: Any = None  # enforcer.rpz.feed.TsigKey
    rpz_refresh: float = 60.0  # re-evaluate effective dates this often (monitor -> enforced moves the serial)
    encrypted: EncryptedSettings | None = None  # --dot/--doh/--doq and their TLS/ClientID flags
    query_log: str | None = None  # --query-log: sampled allowed queries for enforcer discover (dns/querylog.py)
    query_log_sample: float = 0.1
    feeds_refresh: bool = False  # --feeds-refresh: the URL feed updater on schedule (enforcer/feeds/schedule.py)
    feeds_cafile: str | None = None
    require_apps: list[str] | None = field(default_factory=list)  # --require-app; None: the apps of the first load

    @classmethod
    def from_args(cls, args: Any) -> DnsSettings:
        """Validate argparse values; ValueError names the flag and the bad value."""
        listen, upstreams = _endpoints(args)
        try:
            mode = parse_mode(args.mode)
        except ValueError as exc:
            raise ValueError(f"--mode: {exc}") from None
        for value in args.allow:
            try:
                parse_network(value)
            except ValueError:
                raise ValueError(f"--allow {value!r}: not a CIDR") from None
        if args.metrics:
            try:
                split_host_port(args.metrics)
            except ValueError as exc:
                raise ValueError(f"--metrics: {exc}") from None
        try:
            cache_bytes = parse_size(args.cache_bytes, minimum=0)
        except ValueError as exc:
            raise ValueError(f"--cache-bytes: {exc}") from None
        rpz = _rpz_settings(args)
        nat64 = []
        for value in getattr(args, "nat64_prefix", None) or []:
            try:
                nat64.append(check_nat64_prefix(ipaddress.IPv6Network(value)))
            except ValueError as exc:
                raise ValueError(f"--nat64-prefix {value!r}: {exc}") from None
        number = parse_number
        min_ttl = number("--min-cache-ttl", getattr(args, "min_cache_ttl", 0), int, 0, 604_800)
        max_ttl = number("--max-cache-ttl", getattr(args, "max_cache_ttl", 86_400), int, 0, 2**31 - 1)
        if min_ttl > max_ttl:
            raise ValueError(f"--min-cache-ttl {min_ttl}: above --max-cache-ttl {max_ttl}")
        return cls(
            **rpz,
            blocklist=list(args.blocklist) if isinstance(args.blocklist, list) else [args.blocklist],
            require_apps=parse_required_apps(getattr(args, "require_app", ())),
            upstreams=upstreams,
            listen=listen,
            mode=mode,
            block_ttl=number("--block-ttl", args.block_ttl, int, 0, 604_800),
            events=args.events or None,
            metrics=args.metrics or None,
            allow=list(args.allow),
            timeout=number("--timeout", args.timeout, float, 0.05, 60),
            cache_size=number("--cache-size", args.cache_size, int, 0, 10_000_000),
            cache_bytes=cache_bytes,
            tcp_max_connections=number(
                "--tcp-max-connections", getattr(args, "tcp_max_connections", 512), int, 1, 100_000
            ),
            tcp_max_per_source=number("--tcp-max-per-source", getattr(args, "tcp_max_per_source", 32), int, 1, 100_000),
            tcp_initial_timeout=number(
                "--tcp-initial-timeout", getattr(args, "tcp_initial_timeout", 2.0), float, 0.1, 60
            ),
            tcp_idle_timeout=number("--tcp-idle-timeout", getattr(args, "tcp_idle_timeout", 10.0), float, 0.1, 600),
            nat64_prefixes=tuple(nat64),
            min_cache_ttl=min_ttl,
            max_cache_ttl=max_ttl,
            encrypted=encrypted_settings(args),
            query_log=getattr(args, "query_log", None) or None,
            query_log_sample=number("--query-log-sample", getattr(args, "query_log_sample", 0.1), float, 0, 1),
            feeds_refresh=bool(getattr(args, "feeds_refresh", False)),
            feeds_cafile=getattr(args, "feeds_cafile", None) or None,
        )


def _endpoints(args: Any) -> tuple[list[tuple[str, int]], list[UpstreamSpec]]:
    """``--listen`` and ``--upstream`` (or resolv.conf's nameservers), validated; never an upstream that is us."""
    listen = []
    for value in args.listen:
        try:
            host, port = split_host_port(value)
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise ValueError(f"--listen {value!r}: {exc}") from None
        listen.append((host, port))
    raw_upstreams = list(args.upstream or []) or resolv_conf_nameservers()
    if not raw_upstreams:
        raise ValueError("no --upstream given and no nameserver in /etc/resolv.conf")
    upstreams = []
    for value in raw_upstreams:
        try:
            upstreams.append(parse_upstream(value))
        except ValueError as exc:
            raise ValueError(f"--upstream: {exc}") from None
    for spec in upstreams:
        # Forwarding to ourselves loops every query until the in-flight cap (e.g. resolv.conf naming this host).
        if spec.kind != "doh" and any(_same_endpoint(spec.host, spec.port, h, p) for h, p in listen):
            raise ValueError(f"--upstream {spec.text}: that is this resolver's own --listen address (a loop)")
    return listen, upstreams


def _same_endpoint(host_a: str, port_a: int, host_b: str, port_b: int) -> bool:
    if port_a != port_b:
        return False
    a, b = ipaddress.ip_address(host_a), ipaddress.ip_address(host_b)
    return a == b or (b.is_unspecified and a.version == b.version and (a.is_loopback or a.is_private))


def _rpz_settings(args: Any) -> dict[str, Any]:
    """The RPZ-feed flags, validated (ValueError names the flag)."""
    zone = getattr(args, "rpz_zone", None)
    if not zone:
        return {}
    from ..policy.names import InvalidName, normalize_name
    from ..rpz.feed import TsigKey

    try:
        zone = normalize_name(zone) + "."
    except InvalidName as exc:
        raise ValueError(f"--rpz-zone {zone!r}: {exc}") from None
    allow = list(getattr(args, "transfer_allow", None) or ["127.0.0.0/8", "::1/128"])
    for value in allow:
        try:
            parse_network(value)
        except ValueError:
            raise ValueError(f"--transfer-allow {value!r}: not a CIDR") from None
    notify = []
    for value in getattr(args, "notify", None) or []:
        try:
            host, port = split_host_port(value, 53)
            ipaddress.ip_address(host)
        except ValueError as exc:
            raise ValueError(f"--notify {value!r}: {exc} (expected IP[:PORT])") from None
        notify.append((host, port))
    tsig = None
    key_file = getattr(args, "tsig_key_file", None)
    if key_file:
        try:
            text = Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"--tsig-key-file {key_file}: {exc.strerror}") from None
        try:
            tsig = TsigKey.parse(text)
        except ValueError as exc:
            raise ValueError(f"--tsig-key-file {key_file}: {exc}") from None
    return {"rpz_zone": zone, "transfer_allow": allow, "notify": notify, "tsig": tsig}


class Resolver:
    def __init__(
        self,
        settings: DnsSettings,
        *,
        registry: CollectorRegistry | None = None,
        writer: EventWriter | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self._own_writer = writer is None
        self.writer = writer if writer is not None else EventWriter(settings.events)
        self.listeners: list[Listener] = []
        self.holder: PolicyHolder | None = None
        self.forwarder: Forwarder | None = None
        self.cache = Cache(
            settings.cache_size, settings.cache_bytes, min_ttl=settings.min_cache_ttl, max_ttl=settings.max_cache_ttl
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._metrics_server: Any = None
        self.feed: RpzFeed | None = None  # with --rpz-zone
        self.encrypted: EncryptedListeners | None = None  # with --dot/--doh/--doq
        self.query_log: Any = None  # dns/querylog.QueryLog with --query-log

    async def start(self) -> list[str]:
        """Load the policy, bind every listen address, start watching; returns the addresses as HOST:PORT."""
        s = self.settings
        loop = asyncio.get_running_loop()
        metrics = Metrics(self.registry, DNS_METRICS)
        # The first load may read a large feed: off the loop, like every reload.
        self.holder = await loop.run_in_executor(
            None, lambda: PolicyHolder(s.blocklist, metrics=metrics, require_apps=s.require_apps)
        )
        if self._own_writer:
            self.writer.register_metrics(self.registry)
        observer = Observer(self.registry, self.writer)
        errors = metrics[DNS_UPSTREAM_ERRORS_TOTAL]
        self.forwarder = Forwarder(s.upstreams, s.timeout, on_error=lambda up: errors.labels(up).inc())
        for i, spec in enumerate(s.upstreams):
            errors.labels(spec.text)  # exported as 0 from the start
            fwd = self.forwarder
            metrics[DNS_UPSTREAM_HEALTHY].labels(spec.text).set_function(lambda i=i, fwd=fwd: float(fwd.healthy(i)))
        cache = self.cache
        metrics[DNS_CACHE_ENTRIES].set_function(lambda: float(len(cache)))
        if s.rpz_zone:
            await self._start_feed(loop)
        if s.query_log:
            from .querylog import QueryLog

            self.query_log = QueryLog(s.query_log, s.query_log_sample)
        parts = ChainParts(
            self.holder, NetworkSet(s.allow), Sinkhole(s.mode, s.block_ttl), cache, self.forwarder, observer, self.feed,
            s.nat64_prefixes, self.query_log.record if self.query_log is not None else None,
        )  # fmt: skip
        handler = build_chain(parts)
        limits = TcpLimits(s.tcp_max_connections, s.tcp_max_per_source, s.tcp_initial_timeout, s.tcp_idle_timeout)
        admit = admission(parts)
        shown: list[str] = []
        try:
            for host, port in s.listen:
                listener = Listener(
                    host, port, handler, observer.outcome, reuse_port=s.reuse_port, tcp_limits=limits, admit=admit
                )
                await listener.start()
                self.listeners.append(listener)
            if s.encrypted is not None:
                s.encrypted.reuse_port = s.reuse_port
                s.encrypted.watch_interval = s.watch_interval
                self.encrypted = EncryptedListeners(
                    s.encrypted, handler, parts.acl.contains_host, observer.outcome, self.registry
                )
                shown = await self.encrypted.start()
        except BaseException:
            await self.stop()
            raise
        listeners = self.listeners
        metrics[DNS_TCP_CONNECTIONS].set_function(lambda: float(sum(li.tcp.connections for li in listeners)))
        if s.metrics:
            try:
                self._metrics_server = serve_metrics(s.metrics, self.registry)
            except OSError as exc:
                await self.stop()
                # Named as the metrics listener: "cannot listen" alone read as the DNS port.
                raise OSError(exc.errno, f"{exc.strerror} (--metrics)", s.metrics) from None
        self._spawn(self.holder.watch(s.watch_interval))
        self._spawn(self._expire_loop())
        if s.feeds_refresh:
            from ..feeds.schedule import FeedScheduler

            self._spawn(FeedScheduler(s.blocklist, self.registry, cafile=s.feeds_cafile).run())
        if threading.current_thread() is threading.main_thread():
            self.holder.install_sighup(loop)
        return [li.display for li in self.listeners] + shown

    async def _start_feed(self, loop: asyncio.AbstractEventLoop) -> None:
        """The RPZ feed: built off the loop (a large policy takes a while), rebuilt in the reload thread after every
        policy change and every ``rpz_refresh`` seconds (effective dates), NOTIFY after each new serial."""
        from ..rpz.feed import RpzFeed

        s, holder = self.settings, self.holder
        assert holder is not None
        feed = RpzFeed(
            s.rpz_zone or "rpz.enforcer.",
            mode=str(s.mode),
            transfer_allow=s.transfer_allow,
            notify=s.notify,
            tsig=s.tsig,
        )

        def changed_at() -> float:
            return max((mtime_ns / 1e9 for _path, mtime_ns, _size, _ino in holder.snapshot()), default=0.0)

        def rebuild(policy: Any) -> None:  # runs in a worker thread
            if feed.update(policy, changed_at=changed_at()):
                loop.call_soon_threadsafe(feed.schedule_notify)

        await loop.run_in_executor(None, rebuild, holder.policy)
        previous = holder.on_change

        def on_change(policy: Any) -> None:
            if previous is not None:
                previous(policy)
            rebuild(policy)

        holder.on_change = on_change

        async def refresh() -> None:
            while True:
                await asyncio.sleep(s.rpz_refresh)
                await loop.run_in_executor(None, rebuild, holder.policy)

        self.feed = feed
        self._spawn(refresh())

    @property
    def metrics_port(self) -> int | None:
        """The port /metrics is served on (useful with ``metrics="127.0.0.1:0"``)."""
        return int(self._metrics_server[0].server_address[1]) if self._metrics_server is not None else None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(5)
            self.cache.expire(5000)

    async def stop(self) -> None:
        """Close the listeners, cancel background work, flush and close the event writer (if ours)."""
        for listener in self.listeners:
            with contextlib.suppress(Exception):
                await listener.close()
        self.listeners.clear()
        if self.encrypted is not None:
            with contextlib.suppress(Exception):
                await self.encrypted.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self.forwarder is not None:
            await self.forwarder.close()
        if self._metrics_server is not None:
            server = self._metrics_server[0]
            server.shutdown()
            server.server_close()
            self._metrics_server = None
        if self._own_writer:
            await asyncio.get_running_loop().run_in_executor(None, self.writer.close)
        if self.query_log is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.query_log.close)
            self.query_log = None


async def run_resolver(
    settings: DnsSettings, stop: asyncio.Event, *, announce: Any = None, started: Any = None
) -> None:
    """Serve until ``stop`` is set. ``announce(addresses)`` (and ``started(resolver)``) run once listening."""
    resolver = Resolver(settings)
    addresses = await resolver.start()
    try:
        if announce is not None:
            announce(addresses)
        if started is not None:
            started(resolver)
        await stop.wait()
    finally:
        await resolver.stop()
