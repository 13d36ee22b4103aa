"""``enforcer feeds update [--blocklist PATH] [--dry-run] [--cafile FILE] [--json]``.

Fetches every URL feed of the blocklist (``include: {url: ...}``), prints per feed the verdict, the names added and
removed and the must-pass names it would block, and swaps the local copies that pass every check (update.py). Exit
status: 0 when every feed is updated or unchanged, 1 when one was refused or failed (its last good copy is kept) or
the blocklist names an invalid URL include, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from ..config import ReplaceAppend, default_blocklist
from .fetch import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["update"], help="update: fetch, check, diff and swap every URL feed")
    parser.add_argument(
        "--blocklist",
        action=ReplaceAppend,
        default=[default_blocklist()],
        metavar="PATH",
        help="blocklist file or folder (repeatable; default: blocklists/)",
    )
    parser.add_argument("--dry-run", action="store_true", help="fetch, check and print the diff; swap nothing")
    parser.add_argument(
        "--must-pass",
        default=None,
        metavar="FILE",
        help="safety names no feed may block (default: must-pass.txt in the blocklist folder, else the shipped one)",
    )
    parser.add_argument("--cafile", default=None, metavar="FILE", help="extra CA certificates for HTTPS feeds (PEM)")
    parser.add_argument(
        "--timeout", default=DEFAULT_TIMEOUT, type=float, metavar="SECONDS", help="per feed (default 30)"
    )
    parser.add_argument(
        "--max-bytes", default=DEFAULT_MAX_BYTES, type=int, metavar="BYTES", help="per feed (default 64 MiB)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per feed instead of the text report")


def run(command: str, args: argparse.Namespace) -> int:
    from .diff import read_must_pass
    from .update import UpdateOptions, as_dict, default_must_pass, find_feeds, result_lines, update_all

    paths = list(args.blocklist)
    specs, problems = find_feeds(paths)
    for p in problems:
        print(f"enforcer feeds: {p}", file=sys.stderr)
    must_pass_path = args.must_pass or default_must_pass(paths)
    try:
        must_pass = read_must_pass(must_pass_path)
    except OSError as exc:
        print(f"enforcer feeds: cannot read the must-pass list {must_pass_path}: {exc.strerror}", file=sys.stderr)
        return 1
    if not specs:
        print(f"enforcer feeds: no URL feeds (include: {{url: ...}}) in {', '.join(paths)}")
        return 1 if problems else 0
    opts = UpdateOptions(dry_run=args.dry_run, timeout=args.timeout, max_bytes=args.max_bytes, cafile=args.cafile)
    results = asyncio.run(update_all(paths, must_pass, opts, specs))
    for res in results:
        if args.json:
            print(json.dumps(as_dict(res)))
        else:
            print("\n".join(result_lines(res)))
    bad = any(r.result in ("refused", "failed") for r in results)
    return 1 if bad or problems else 0
