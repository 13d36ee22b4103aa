"""``enforcer discover --events PATH [--query-log PATH] [--since 7d] [--format yaml|json]``.

Proposes candidate rules with their evidence (model.py, signals.py) as YAML snippets to review and paste, or one JSON
object per candidate. Nothing is applied. Exit status 0 (with or without candidates), 1 for unreadable inputs or an
invalid blocklist, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..config import add_blocklist_argument


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events", action="append", default=[], metavar="PATH", help="hit event files or folders (repeatable)"
    )
    parser.add_argument(
        "--query-log",
        action="append",
        default=[],
        metavar="PATH",
        help="the resolver's --query-log file (repeatable; rotated PATH.N files are read too; default: none)",
    )
    parser.add_argument("--since", default="7d", metavar="DURATION", help="look this far back (default 7d)")
    add_blocklist_argument(parser, "the policy candidates are checked against (repeatable; default: blocklists/)")
    parser.add_argument(
        "--must-pass",
        default=None,
        metavar="FILE",
        help="safety names never proposed (default: must-pass.txt in the blocklist folder, else the shipped one)",
    )
    parser.add_argument(
        "--window", default=5.0, type=float, metavar="SECONDS", help="co-occurrence window around a blocked query "
        "(default 5)"
    )  # fmt: skip
    parser.add_argument("--format", choices=["yaml", "json"], default="yaml", help="output (default: yaml)")


def run(command: str, args: argparse.Namespace) -> int:
    from ..feeds.diff import read_must_pass
    from ..feeds.update import default_must_pass
    from ..policy import PolicyError, load_policy
    from ..policy.feeds import parse_duration
    from . import discover
    from .render import as_dict, as_yaml

    try:
        since = time.time() - parse_duration(args.since)
    except ValueError as exc:
        print(f"enforcer discover: --since: {exc}", file=sys.stderr)
        return 2
    if not args.events and not args.query_log:
        print("enforcer discover: give --events and/or --query-log", file=sys.stderr)
        return 2
    try:
        policy = load_policy(list(args.blocklist))
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    must_pass_path = args.must_pass or default_must_pass(list(args.blocklist))
    try:
        must_pass = read_must_pass(must_pass_path)
    except OSError as exc:
        print(f"enforcer discover: cannot read {must_pass_path}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        cands = discover(args.events, args.query_log, policy, since, must_pass, window=args.window)
    except OSError as exc:
        print(f"enforcer discover: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        for c in cands:
            print(json.dumps(as_dict(c), ensure_ascii=False))
    elif cands:
        print(as_yaml(cands), end="")
    else:
        print("# no candidates", file=sys.stderr)
    return 0
