"""``enforcer check``, ``enforcer lookup`` and ``enforcer export``: the policy from the command line."""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..config import default_blocklist
from .addresses import parse_ip_literal
from .bounded import DEFAULT_LIMITS, Limits
from .names import InvalidName, normalize_name

# The block answer when none is given: the resolver's --mode and export's --mode share it, so an exported zone
# answers like the resolver does.
DEFAULT_MODE = "null"
# Shown in --help instead of default_blocklist()'s resolved path (which may be the shipped lists' absolute path).
_BLOCKLIST_HELP = "blocklist file or folder (default: blocklists/)"

if TYPE_CHECKING:
    from .matcher import Policy
    from .model import Match


def add_arguments(command: str, p: argparse.ArgumentParser) -> None:
    if command == "check":
        p.add_argument("paths", nargs="*", metavar="PATH", help="blocklist files or folders (default: blocklists/)")
        # --blocklist like lookup and export; the positional PATHs stay for compatibility, both may be given.
        p.add_argument(
            "--blocklist",
            action="append",
            default=[],
            metavar="PATH",
            help="blocklist file or folder (repeatable; default: blocklists/)",
        )
        p.add_argument(
            "--strict", action="store_true", help="treat warnings (duplicate, shadowed, over-broad rules) as errors"
        )
        for flag, default, what in (
            ("--max-yaml-bytes", DEFAULT_LIMITS.yaml_bytes, "a blocklist YAML file"),
            ("--max-feed-bytes", DEFAULT_LIMITS.feed_bytes, "an include feed"),
        ):
            p.add_argument(
                flag,
                type=int,
                default=default,
                metavar="N",
                help=f"refuse {what} larger than N bytes (default: {default})",
            )
    elif command == "lookup":
        p.add_argument("queries", nargs="+", metavar="QUERY", help="a domain, a URL or an IP address")
        p.add_argument("--blocklist", metavar="PATH", help=_BLOCKLIST_HELP)
        p.add_argument("--at", metavar="ISO-DATE", help="evaluate 'enforced' at this moment instead of now")
        p.add_argument("--client", metavar="IP", help="the client address (exempt clients are not enforced)")
        p.add_argument("--method", metavar="METHOD", help="HTTP method for URL queries (e.g. POST)")
    elif command == "export":
        from .export import FORMATS

        # Not required=True: argparse would then refuse a format given in the --config file.
        p.add_argument("--format", choices=FORMATS, help="output format (required, on the command line or in --config)")
        p.add_argument("--blocklist", metavar="PATH", help=_BLOCKLIST_HELP)
        p.add_argument("--zone", default="rpz.enforcer.", help="RPZ zone name (rpz format; default: %(default)s)")
        p.add_argument(
            "--mode",
            default=DEFAULT_MODE,
            help="answer for blocked names (rpz, unbound, dnsmasq, hosts): nxdomain, nodata, null, refused (unbound) "
            "or ip:ADDR[,ADDR6] (default: %(default)s, as the resolver's --mode)",
        )
        p.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")


def run(command: str, args: argparse.Namespace) -> int:
    if command == "check":
        return run_check(args)
    if command == "lookup":
        return run_lookup(args)
    return run_export(args)


def _load(paths: list[str], limits: Limits = DEFAULT_LIMITS) -> Any:
    """Load or print the errors; returns the Policy or None."""
    from . import PolicyError, load_policy

    try:
        return load_policy(paths, limits=limits)
    except PolicyError as exc:
        # The errors only: warnings (duplicates, an empty rule list) would bury them; `check` shows warnings once
        # the file loads.
        for p in exc.problems:
            if p.severity == "error":
                print(str(p), file=sys.stderr)
        return None


def run_check(args: argparse.Namespace) -> int:
    paths = [*args.paths, *args.blocklist] or [default_blocklist()]
    if args.max_yaml_bytes < 1 or args.max_feed_bytes < 1:
        print("enforcer check: --max-yaml-bytes and --max-feed-bytes must be positive", file=sys.stderr)
        return 2
    policy = _load(paths, Limits(yaml_bytes=args.max_yaml_bytes, feed_bytes=args.max_feed_bytes))
    if policy is None:
        return 1
    for w in policy.warnings:
        print(str(w) if not args.strict else str(w).replace(": warning: ", ": ", 1), file=sys.stderr)
    if args.strict and policy.warnings:
        return 1
    kinds: dict[str, int] = {}
    for (_app, kind), n in policy.counts.items():
        kinds[kind] = kinds.get(kind, 0) + n
    print(f"OK: {len(policy.files)} file(s), {len(policy.apps)} app(s): {', '.join(sorted(policy.apps))}")
    for app in sorted(policy.apps):
        per = ", ".join(f"{k} {n}" for (a, k), n in sorted(policy.counts.items()) if a == app)
        a = policy.apps[app]
        print(f"  {app}: {per}; effective {a.effective.isoformat()} ({a.timezone})")
    print("rules: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    print(f"fingerprint: {policy.fingerprint}")
    if policy.warnings:
        print(f"{len(policy.warnings)} warning(s)")
    return 0


# The last label of a name is never all digits (RFC 3696 section 2) nor a 0x number: such a query means an address.
_ADDRESS_LIKE = re.compile(r"(?:.*\.)?(?:[0-9]+|0[xX][0-9a-fA-F]*)\.?")


def classify(query: str) -> str:
    """``url``, ``ip`` or ``domain``. Every IPv4 spelling glibc accepts (``1296740613``, ``0x4d4ab105``) is an ``ip``,
    and so is a query that only looks like one (``300.1.1.1``): run_lookup then reports it as invalid rather than
    answering ``none`` for a name nobody can resolve."""
    if "://" in query or "/" in query:
        return "url"
    if ":" in query or parse_ip_literal(query) is not None or _ADDRESS_LIKE.fullmatch(query):
        return "ip"
    return "domain"


def parse_when(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    t = text.strip().replace("Z", "+00:00")
    when = datetime.fromisoformat(t)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _lookup_one(policy: Policy, query: str, kind: str, method: str | None) -> Match | None:
    """The match for one query of ``kind``; InvalidName or ValueError when it is not a valid one."""
    if kind == "domain":
        normalize_name(query)
        return policy.match_name(query)
    if kind == "ip":
        addr = parse_ip_literal(query)
        if addr is None:
            raise ValueError("not an IP address in any form the platform resolver accepts")
        return policy.match_ip(addr)
    return policy.match_url(query, method)


def run_lookup(args: argparse.Namespace) -> int:

    try:
        at = parse_when(args.at)
    except ValueError:
        print(f"--at: not an ISO date or timestamp: {args.at!r}", file=sys.stderr)
        return 1
    client = None
    if args.client:
        try:
            client = ipaddress.ip_address(args.client)
        except ValueError:
            print(f"--client: not an IP address: {args.client!r}", file=sys.stderr)
            return 1
    policy = _load([args.blocklist or default_blocklist()])
    if policy is None:
        return 1
    status = 0
    for query in args.queries:
        kind = classify(query)
        try:
            match = _lookup_one(policy, query, kind, args.method)
        except (InvalidName, ValueError) as exc:
            print(f"{query}: invalid {kind}: {exc}", file=sys.stderr)
            status = 1
            continue
        out: dict[str, Any] = {
            "query": query,
            "kind": kind,
            "verdict": "none",
            "app": None,
            "category": None,
            "rule": None,
            "source": None,
            "enforced": False,
        }
        if match is not None:
            out.update(
                verdict=match.verdict,
                app=match.rule.app,
                category=match.rule.category,
                rule=match.rule.id,
                source=match.rule.source,
                enforced=match.enforced(at, client),
            )
        if kind == "domain" and policy.has_url_rules(query.rstrip(".").lower()):
            # A name-level "none" for a shared host (dldir1.qq.com) reads as "allowed" although the proxy blocks
            # some of its paths: say so, with new keys only, the old ones are a contract.
            out["url_rules"] = True
            out["note"] = "URL rules exist for this host: the proxy judges each request path (look up a URL)"
        print(json.dumps(out, ensure_ascii=False))
    return status


def run_export(args: argparse.Namespace) -> int:
    from .export import FORMATS, export_policy

    if not args.format:
        print(f"enforcer export: error: --format is required ({', '.join(FORMATS)})", file=sys.stderr)
        return 2

    policy = _load([args.blocklist or default_blocklist()])
    if policy is None:
        return 1
    try:
        text = export_policy(policy, args.format, zone=args.zone, mode=args.mode)
    except ValueError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 1
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return 0
