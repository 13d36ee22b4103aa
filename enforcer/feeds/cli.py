"""``enforcer feeds update [--blocklist PATH] [--dry-run] [--cafile FILE] [--json] [--metrics-textfile FILE]``.

Fetches every URL feed of the blocklist (``include: {url: ...}``), prints per feed the verdict, the names added and
removed and the must-pass names it would block, and swaps the local copies that pass every check (update.py). Exit
status: 0 when every feed is updated or unchanged, 1 when one was refused or failed (its last good copy is kept) or
the blocklist names an invalid URL include, 2 for a usage error.

``--metrics-textfile FILE``: a run by hand or from cron exports no /metrics, so the figures that ``--feeds-refresh``
exports (``enforcer_feed_updates_total{feed,result}`` of this run, ``enforcer_feed_age_seconds``,
``enforcer_feed_refresh_seconds``: the same ``FeedScheduler.record``/``publish``) are written to FILE in Prometheus
text format for node_exporter's textfile collector (name it ``*.prom`` in its ``--collector.textfile.directory``),
through a temporary file and a rename, so the collector never reads half a file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING

from ..config import add_blocklist_argument
from .fetch import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from ..policy.feeds import FeedSpec


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["update"], help="update: fetch, check, diff and swap every URL feed")
    add_blocklist_argument(parser)
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
    parser.add_argument(
        "--metrics-textfile",
        default=None,
        metavar="FILE",
        help="also write the feed metrics to FILE for node_exporter's textfile collector "
        "(e.g. /var/lib/node_exporter/enforcer_feeds.prom; default: none)",
    )


def run(command: str, args: argparse.Namespace) -> int:
    from .diff import read_must_pass
    from .update import UpdateOptions, as_dict, default_must_pass, find_feeds, result_lines, update_all

    paths = list(args.blocklist)
    if args.metrics_textfile and args.dry_run:
        print("enforcer feeds: --metrics-textfile records real updates: not with --dry-run", file=sys.stderr)
        return 2
    specs, problems = find_feeds(paths)
    for p in problems:
        print(f"enforcer feeds: {p}", file=sys.stderr)
    must_pass_path = args.must_pass or default_must_pass(paths)
    try:
        must_pass = read_must_pass(must_pass_path)
    except OSError as exc:
        print(f"enforcer feeds: cannot read the must-pass list {must_pass_path}: {exc.strerror}", file=sys.stderr)
        return 1
    textfile = _Textfile(paths, args.metrics_textfile) if args.metrics_textfile else None
    if not specs:
        print(f"enforcer feeds: no URL feeds (include: {{url: ...}}) in {', '.join(paths)}")
        return 1 if (problems or (textfile and not textfile.write(specs))) else 0
    opts = UpdateOptions(
        dry_run=args.dry_run,
        timeout=args.timeout,
        max_bytes=args.max_bytes,
        cafile=args.cafile,
        record=textfile.scheduler.record if textfile else None,
    )
    results = asyncio.run(update_all(paths, must_pass, opts, specs))
    if textfile and not textfile.write(specs):
        problems.append("metrics textfile not written")
    for res in results:
        if args.json:
            print(json.dumps(as_dict(res)))
        else:
            print("\n".join(result_lines(res)))
    bad = any(r.result in ("refused", "failed") for r in results)
    return 1 if bad or problems else 0


class _Textfile:
    """The feed metrics of one run, written for node_exporter's textfile collector."""

    def __init__(self, paths: list[str], path: str) -> None:
        from prometheus_client import CollectorRegistry

        from .schedule import FeedScheduler

        self.registry = CollectorRegistry()
        self.scheduler = FeedScheduler(paths, self.registry)
        self.path = path

    def write(self, specs: list[FeedSpec]) -> bool:
        from prometheus_client import write_to_textfile

        self.scheduler.publish(specs)
        try:
            write_to_textfile(self.path, self.registry)  # a temporary file beside it, then os.replace
        except OSError as exc:
            print(f"enforcer feeds: cannot write the metrics textfile {self.path}: {exc.strerror}", file=sys.stderr)
            return False
        return True
