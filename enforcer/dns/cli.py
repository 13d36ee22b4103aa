"""``enforcer dns``: flags (``add_arguments``) and ``run``.

``run`` validates the flags into ``DnsSettings`` (a bad value: one line on stderr, exit 1) and hands them to
``process.run_single`` (one process: loads the policy, a bad blocklist gives its ``PATH:LINE:COL`` lines and exit 1;
binds every ``--listen`` address, one start-up line each on stdout; serves until SIGTERM/SIGINT, then stops cleanly
and flushes hit events) or, with ``--workers N``, to ``workers.run_workers``.
"""

from __future__ import annotations

import argparse
import sys

from ..config import ReplaceAppend, add_blocklist_argument
from ..policy.cli import DEFAULT_MODE
from ..policy.reloader import REQUIRE_APP_HELP
from . import DEFAULT_ALLOW


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        action=ReplaceAppend,
        default=["127.0.0.1:5353"],
        metavar="HOST:PORT",
        help="UDP and TCP listen address (repeatable; [::1]:5353 for IPv6; default 127.0.0.1:5353)",
    )
    parser.add_argument(
        "--upstream",
        action=ReplaceAppend,
        default=[],
        metavar="ADDR",
        help="IP[:PORT] (UDP, TCP on truncation), tcp://IP[:PORT] or https://HOST/dns-query "
        "(repeatable, tried in order with failover; default: nameservers of /etc/resolv.conf)",
    )
    add_blocklist_argument(parser)
    parser.add_argument("--require-app", metavar="APP,APP", default=None, help=REQUIRE_APP_HELP)
    parser.add_argument(
        "--mode",
        default=DEFAULT_MODE,
        metavar="MODE",
        help="answer for blocked names: nxdomain, null (0.0.0.0 / ::), nodata, refused, ip:ADDR[,ADDR6] "
        "(default: %(default)s)",
    )
    parser.add_argument("--block-ttl", default=60, metavar="SECONDS", help="TTL of blocked answers (default 60)")
    parser.add_argument("--events", default=None, metavar="PATH", help="hit events file (ECS JSON Lines)")
    parser.add_argument("--metrics", default=None, metavar="HOST:PORT", help="serve Prometheus /metrics here")
    parser.add_argument(
        "--allow",
        action=ReplaceAppend,
        default=list(DEFAULT_ALLOW),
        metavar="CIDR",
        help="clients allowed to query (repeatable; others get REFUSED; default loopback and private ranges)",
    )
    parser.add_argument(
        "--timeout", default=2.0, metavar="SECONDS", help="upstream timeout; SERVFAIL after it (default 2)"
    )
    _cache_and_tcp_arguments(parser)
    _rpz_arguments(parser)
    _encrypted_arguments(parser)
    _discovery_arguments(parser)


def _discovery_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("discovery and feeds (enforcer discover, enforcer feeds)")
    group.add_argument(
        "--query-log",
        default=None,
        metavar="PATH",
        help="write a sampled log of ALLOWED queries (client, name) for enforcer discover; it names clients and what "
        "they looked up (default: off)",
    )
    group.add_argument(
        "--query-log-sample",
        default=0.1,
        metavar="RATE",
        help="fraction of allowed queries the query log keeps, 0 to 1 (default 0.1)",
    )
    group.add_argument(
        "--feeds-refresh",
        action="store_true",
        help="update the blocklist's URL feeds in the background, each on its own 'refresh:' (default: off; "
        "'enforcer feeds update' by hand)",
    )
    group.add_argument(
        "--feeds-cafile", default=None, metavar="FILE", help="extra CA certificates for HTTPS feeds (default: none)"
    )


def _cache_and_tcp_arguments(parser: argparse.ArgumentParser) -> None:
    """The cache, TCP, NAT64 and worker flags (after the basic ones, in this order in --help)."""
    parser.add_argument(
        "--cache-size", default=100_000, metavar="ENTRIES", help="cache entries (0 disables the cache; default 100000)"
    )
    parser.add_argument("--cache-bytes", default="64M", metavar="BYTES", help="cache memory bound (default 64M)")
    parser.add_argument(
        "--tcp-max-connections",
        default=512,
        metavar="N",
        help="open DNS-over-TCP client connections; beyond it new ones are closed at once (default 512)",
    )
    parser.add_argument(
        "--tcp-max-per-source",
        default=32,
        metavar="N",
        help="open DNS-over-TCP connections per client address (IPv6: per /64); beyond it new ones from that source "
        "are closed at once (default 32)",
    )
    parser.add_argument(
        "--tcp-initial-timeout",
        default=2.0,
        metavar="SECONDS",
        help="a new TCP connection must send its first query's length within this (default 2)",
    )
    parser.add_argument(
        "--tcp-idle-timeout",
        default=10.0,
        metavar="SECONDS",
        help="a TCP connection idle this long between queries is closed (default 10)",
    )
    parser.add_argument(
        "--nat64-prefix",
        action=ReplaceAppend,
        default=[],
        metavar="PREFIX",
        help="NAT64 prefix whose AAAA answers embed IPv4 (repeatable; /32 /40 /48 /56 /64 /96); the well-known "
        "64:ff9b::/96, 6to4 and IPv4-mapped are always judged by the IPv4 cidr rules",
    )
    parser.add_argument(
        "--max-cache-ttl",
        default=86_400,
        metavar="SECONDS",
        help="longest TTL kept in the cache and given to clients (default 86400)",
    )
    parser.add_argument(
        "--min-cache-ttl",
        default=0,
        metavar="SECONDS",
        help="shortest TTL kept in the cache and given to clients (default 0)",
    )
    parser.add_argument(
        "--workers",
        default=1,
        metavar="N",
        help="resolver processes sharing the listen addresses (SO_REUSEPORT), one per core; /metrics sums them "
        "(default 1)",
    )


def _rpz_arguments(parser: argparse.ArgumentParser) -> None:
    rpz = parser.add_argument_group("RPZ feed (BIND/Unbound/PowerDNS secondaries enforce the same policy)")
    rpz.add_argument(
        "--rpz-zone",
        nargs="?",
        const="rpz.enforcer.",
        default=None,
        metavar="NAME",
        help="serve the policy as this Response Policy Zone by AXFR/IXFR (NAME defaults to rpz.enforcer.)",
    )
    rpz.add_argument(
        "--transfer-allow",
        action=ReplaceAppend,
        default=["127.0.0.0/8", "::1/128"],
        metavar="CIDR",
        help="clients allowed to transfer the zone (repeatable; others get REFUSED; default loopback)",
    )
    rpz.add_argument(
        "--notify", action=ReplaceAppend, default=[], metavar="IP[:PORT]", help="send NOTIFY here on every change"
    )
    rpz.add_argument(
        "--tsig-key-file",
        metavar="FILE",
        help="TSIG key (HMAC-SHA256) required for transfers and used for NOTIFY: a file holding NAME:BASE64SECRET",
    )


def _encrypted_arguments(parser: argparse.ArgumentParser) -> None:
    enc = parser.add_argument_group(
        "Encrypted DNS (DoT, DoH, DoQ) and device identity (ClientID); every transport uses the same chain"
    )
    for flag, what in (
        ("--dot", "DNS over TLS, RFC 7858"),
        ("--doh", "DNS over HTTPS at /dns-query, RFC 8484, HTTP/2 and HTTP/1.1"),
        ("--doq", "DNS over QUIC, RFC 9250"),
    ):
        enc.add_argument(
            flag, action="append", default=[], metavar="HOST:PORT", help=f"{what} (repeatable; default: off)"
        )
    enc.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="PEM certificate chain (re-read when it changes; default: a "
        "self-signed one in --tls-dir, loopback listeners only)",
    )
    enc.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    enc.add_argument(
        "--tls-dir",
        default="var/tls",
        metavar="DIR",
        help="where the self-signed certificate is made without --tls-cert (default: %(default)s)",
    )
    enc.add_argument(
        "--server-name",
        metavar="NAME",
        help="this resolver's name, e.g. dns.example.gov: a TLS "
        "server name <id>.NAME carries the ClientID <id> (default: none, ids from the DoH path only)",
    )
    enc.add_argument(
        "--require-client-id",
        action="store_true",
        help="answer encrypted queries only for a known "
        "ClientID (others: REFUSED, DoH 403); any source may then connect (default: off, --allow applies)",
    )
    enc.add_argument(
        "--client-ids", metavar="FILE", help="known ClientIDs, one per line, # comments (re-read on change)"
    )
    enc.add_argument(
        "--inventory", metavar="FILE", help="device inventory CSV; its client_id column adds known ClientIDs"
    )
    enc.add_argument(
        "--tls-handshake-timeout",
        default=5.0,
        metavar="SECONDS",
        help="TLS/QUIC handshake must finish within this (default 5)",
    )
    enc.add_argument(
        "--tls-idle-timeout",
        default=30.0,
        metavar="SECONDS",
        help="an encrypted connection idle this long is closed (default 30)",
    )
    enc.add_argument(
        "--tls-max-connections",
        default=10_000,
        metavar="N",
        help="open encrypted connections in all; beyond it new ones are closed (default 10000)",
    )
    enc.add_argument(
        "--tls-max-per-source",
        default=32,
        metavar="N",
        help="open encrypted connections per client address (IPv6: per /64) (default 32)",
    )
    enc.add_argument(
        "--doh-max-streams", default=100, metavar="N", help="HTTP/2 concurrent streams per DoH connection (default 100)"
    )


def run(command: str, args: argparse.Namespace) -> int:
    from .service import DnsSettings

    try:
        settings = DnsSettings.from_args(args)
    except ValueError as exc:
        from ..config import from_config

        shown = from_config(args, str(exc))
        print(shown if shown != str(exc) else f"enforcer dns: {exc}", file=sys.stderr)
        return 1
    if settings.events:
        from ..events import writable_problem

        if (problem := writable_problem(settings.events)) is not None:
            print(f"enforcer dns: --events {problem}", file=sys.stderr)
            return 1

    try:
        workers = int(getattr(args, "workers", 1))
        if not 1 <= workers <= 64:
            raise ValueError
    except (TypeError, ValueError):
        print(f"enforcer dns: --workers {args.workers!r}: must be a whole number from 1 to 64", file=sys.stderr)
        return 1
    if workers > 1:
        if settings.encrypted is not None and settings.encrypted.doq:
            # SO_REUSEPORT spreads a QUIC connection's datagrams over processes that do not share its state.
            print("enforcer dns: --doq needs --workers 1 (QUIC connections cannot be shared by processes)",
                  file=sys.stderr)  # fmt: skip
            return 1
        from .workers import run_workers

        return run_workers(settings, workers)
    from .process import run_single

    return run_single(settings)
