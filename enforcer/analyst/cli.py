"""``enforcer analyst`` and ``enforcer report``: argument definitions and entry points (heavy imports inside run).

- ``add_arguments(command, parser)``: the flags of either command.
- ``run("report", args)``: stream the event files once and print the report (table, csv, json); exit 1 with one
  line per problem for a bad blocklist, inventory, time bound, a missing events path, or an event file that is not
  a regular file or is over ``--max-file-size``.
- ``run("analyst", args)``: serve until SIGINT/SIGTERM (``web.start_analyst``); exit 1 for a non-loopback
  ``--listen`` without ``--token-file``, a missing (without ``--create-token``), unreadable or empty token file, a
  bad inventory or blocklist.
  ``--allowed-host`` names join the Host header allow-list (``hostcheck.host_allowed``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..config import ConfigError, ReplaceAppend, add_blocklist_argument, read_utf8

DEFAULT_EVENTS = "var/events"
DEFAULT_WINDOW_S = 60  # identity.DEFAULT_WINDOW_S (not imported here: the parser is built without heavy imports)
MAX_WINDOW_S = 7 * 86400


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 <= seconds <= MAX_WINDOW_S:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..{MAX_WINDOW_S} seconds")
    return seconds


MAX_WORKERS = 256
MIN_POLL_S, MAX_POLL_S = 0.05, 3600.0


def _poll_interval(value: str) -> float:
    # 0 or NaN spun a core; inf killed the ingest thread (a sleep past the platform's time_t)
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not MIN_POLL_S <= seconds <= MAX_POLL_S:
        raise argparse.ArgumentTypeError(f"{value} is outside {MIN_POLL_S}..{MAX_POLL_S:g} seconds")
    return seconds


def _workers(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if not 1 <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{n} is outside 1..{MAX_WORKERS}")
    return n


def _flatten(values: Any) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out += _flatten(v) if isinstance(v, list | tuple) else [str(v)]
    return out


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        action=ReplaceAppend,
        nargs="+",
        default=[DEFAULT_EVENTS],
        metavar="PATH",
        help="event files or folders (a folder: its *.jsonl and rotated *.jsonl.N; a file: with its rotations; "
        "default: var/events)",
    )
    parser.add_argument(
        "--inventory",
        metavar="FILE",
        help="CSV with a header: device,owner,unit and one or more of cidr,mac,hostname,client_id "
        "(maps clients to devices)",
    )
    parser.add_argument(
        "--leases",
        action=ReplaceAppend,
        default=[],
        metavar="FILE",
        help="DHCP lease file (repeatable): Kea memfile CSV (v4/v6), ISC dhcpd.leases or dnsmasq.leases, format "
        "detected; an event is attributed to the device that held its address at its time (default: none)",
    )
    parser.add_argument(
        "--attempt-window",
        type=_seconds,
        default=DEFAULT_WINDOW_S,
        metavar="SECONDS",
        help="hits of one device on one app within this many seconds of the first count as one attempt; raw hits "
        "are shown too (0: every hit is an attempt; default: %(default)s)",
    )
    add_blocklist_argument(parser, "policy files or folders: their effective dates decide which attempts were enforced")
    parser.add_argument(
        "--max-file-size",
        default="4G",
        metavar="SIZE",
        help="largest event file read (bytes, or with K/M/G); a larger one is refused (report: exit 1; analyst: "
        "skipped and counted). Only regular files are read, lines over 1 MiB are skipped (default: %(default)s)",
    )
    if command == "report":
        parser.add_argument("--since", help="from this time (RFC 3339, YYYY-MM-DD, now, or back from now: 24h, 7d)")
        parser.add_argument("--until", help="before this time (same forms as --since)")
        parser.add_argument("--app", action=ReplaceAppend, default=[], metavar="APP", help="only this app (repeatable)")
        parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
        parser.add_argument(
            "--workers",
            type=_workers,
            default=min(4, os.cpu_count() or 1),
            help="processes for inputs over 64 MB (each reads its own byte ranges; default: CPUs, at most 4)",
        )
    else:
        parser.add_argument(
            "--listen", default="127.0.0.1:8000", metavar="HOST:PORT", help="address to serve on (default: %(default)s)"
        )
        parser.add_argument(
            "--token-file",
            metavar="FILE",
            help="file holding the bearer token for / and /api/* (required to listen beyond loopback); one token "
            "per analyst as name:token lines names who changed a case (a plain token line is named 'analyst')",
        )
        parser.add_argument(
            "--create-token",
            action="store_true",
            help="if --token-file is missing, create it (mode 0600) with a new random token and print the token once",
        )
        parser.add_argument(
            "--db", default="var/analyst.sqlite", metavar="PATH", help="SQLite event store (default: %(default)s)"
        )
        parser.add_argument(
            "--poll-interval",
            type=_poll_interval,
            default=0.5,
            metavar="SECONDS",
            help="between event file polls (0.5)",
        )
        parser.add_argument(
            "--retention",
            default="forever",
            metavar="PERIOD",
            help="delete events older than this (90d, 12w, 36h, 1y), and cases closed before it; in small batches "
            "in the background (default: forever, every event kept)",
        )
        parser.add_argument(
            "--query-log",
            action=ReplaceAppend,
            default=[],
            metavar="FILE",
            help="the resolver's sampled query log (enforcer dns --query-log; repeatable, rotations read too): the "
            "Candidates panel adds co-occurrence, the unknown names the clients that hit a banned app ask for "
            "around those hits (default: none)",
        )
        parser.add_argument(
            "--allowed-host",
            action=ReplaceAppend,
            default=[],
            metavar="NAME",
            help="another name this analyst may be reached by (repeatable). Without a token, a request whose Host "
            "header is not the listen address, localhost, 127.0.0.1, [::1] or one of these (with the port) is "
            "refused (DNS rebinding); with a token, the check applies only when names are given",
        )


def _load_policy(paths: list[str]) -> Any:
    from ..policy import PolicyError, load_policy

    try:
        return load_policy(paths)
    except PolicyError as exc:
        errors = [str(p) for p in exc.problems if p.severity == "error"] or [str(exc)]
        raise ConfigError("\n".join(errors)) from None


def run(command: str, args: argparse.Namespace) -> int:
    return run_report(args) if command == "report" else run_analyst(args)


def run_report(args: argparse.Namespace) -> int:
    from ..config import parse_size
    from .files import check_files, event_files
    from .formats import FORMATTERS
    from .identity import Identifier
    from .inventory import Inventory
    from .leases import load as load_leases
    from .lines import EventFileError, tune_gc
    from .report import build_report, enforcement_of, parse_range, stream_report, unknown_apps

    events = _flatten(args.events)
    missing = [p for p in events if not Path(p).exists() and not Path(p).is_symlink()]
    if missing:
        for p in missing:
            print(f"report: {p}: no such file or folder", file=sys.stderr)
        return 1
    try:
        since, until = parse_range(args.since, args.until)
        max_bytes = parse_size(args.max_file_size)
    except ValueError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    # Every input is checked before anything is read: a FIFO, a device or a directory named like an event file, or
    # a file over --max-file-size, is one line each and exit 1, never a hang or an unbounded read.
    problems = check_files(event_files(events), max_bytes)
    if problems:
        for problem in problems:
            print(f"report: {problem}", file=sys.stderr)
        return 1
    inventory = Inventory.load(args.inventory)
    leases = load_leases(_flatten(args.leases))
    if leases.skipped:
        print(f"report: skipped {leases.skipped} malformed lease line(s); first: {leases.problems[0]}", file=sys.stderr)
    policy = _load_policy(_flatten(args.blocklist))
    enforcement = enforcement_of(policy)
    tune_gc()  # this process owns its collector: the workers' results it merges, or a sequential pass's rows
    try:
        tallies, stats = stream_report(
            events,
            enforcement=enforcement,
            since=since,
            until=until,
            apps=_flatten(args.app),
            workers=max(1, args.workers),
            max_file_bytes=max_bytes,
            identifier=Identifier(inventory, leases.book),
        )
    except EventFileError as exc:  # replaced between the check and the read
        print(f"report: {exc}", file=sys.stderr)
        return 1
    if stats.invalid:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(stats.skipped.items()))
        print(
            f"report: skipped {stats.invalid} line(s) ({reasons}; first at {stats.first_invalid}); "
            f"{stats.recovered} event(s) recovered from torn lines",
            file=sys.stderr,
        )
    if stats.duplicates:
        print(f"report: {stats.duplicates} duplicate event(s) (same time and event.id) counted once", file=sys.stderr)
    unknown = unknown_apps(_flatten(args.app), policy, stats)
    if unknown:
        known = sorted(set(policy.apps) | stats.apps)
        print(
            f"report: unknown app {', '.join(map(repr, unknown))}: neither the policy nor the events name it "
            f"(known: {', '.join(known) or 'none'})",
            file=sys.stderr,
        )
        return 1
    report = build_report(tallies, window_s=args.attempt_window, since=since, until=until)
    del tallies  # the hit times (8 bytes an event) are not needed to print: free them before the output is built
    sys.stdout.write(FORMATTERS[args.format](report))
    sys.stdout.flush()
    return 0


def _create_token(path: Path) -> None:
    import secrets

    token = secrets.token_urlsafe(24)
    try:
        # O_EXCL: never overwrite a token another process created meanwhile; 0600 from the start, not after a chmod.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise ConfigError(f"analyst: cannot create --token-file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    print(f"analyst: created --token-file {path} (mode 0600); token: {token}", file=sys.stderr, flush=True)


# A token file holds a line per analyst: a few KB.
TOKEN_FILE_BYTES = 1024 * 1024


def _read_token(path: str | None, create: bool = False) -> str | None:
    if not path:
        if create:
            raise ConfigError("analyst: --create-token needs --token-file FILE (where to write the token)")
        return None
    if create:
        _create_token(Path(path))
    elif not Path(path).exists():
        raise ConfigError(
            f"analyst: --token-file {path} does not exist (give --create-token to create it with a new random token)"
        )
    token = read_utf8(path, TOKEN_FILE_BYTES, "--token-file").strip()
    if not token:
        raise ConfigError(f"analyst: --token-file {path} is empty")
    return token


def _size(value: str) -> int:
    from ..config import parse_size

    try:
        return parse_size(value)
    except ValueError as exc:
        raise ConfigError(f"analyst: --max-file-size: {exc}") from None


def _retention(value: str | None) -> float | None:
    from .retention import parse_retention

    try:
        return parse_retention(value)
    except ValueError as exc:
        raise ConfigError(f"analyst: {exc}") from None


def run_analyst(args: argparse.Namespace) -> int:
    import asyncio
    import signal
    import sqlite3

    from ..policy import PolicyError
    from .hostcheck import check_listen
    from .lines import tune_gc
    from .state import AnalystSettings, parse_tokens
    from .web import start_analyst

    settings = AnalystSettings(
        listen=args.listen,
        events=_flatten(args.events),
        inventory=args.inventory,
        token=_read_token(args.token_file, args.create_token),
        db=args.db,
        blocklist=_flatten(args.blocklist),
        poll_interval=float(args.poll_interval),
        max_file_bytes=_size(args.max_file_size),
        allowed_hosts=_flatten(args.allowed_host),
        leases=_flatten(args.leases),
        attempt_window=args.attempt_window,
        retention=_retention(getattr(args, "retention", None)),
        query_logs=_flatten(args.query_log),
    )
    if settings.token:
        parse_tokens(settings.token, source=str(args.token_file))  # name:token lines: file:line errors now
    check_listen(settings)  # before anything is opened: the refusal is the whole output
    tune_gc()  # this process owns its collector: ingest's row tuples (lines.GC_THRESHOLDS)

    async def serve() -> int:
        try:
            runner = await start_analyst(settings)
        except PolicyError as exc:
            errors = [str(p) for p in exc.problems if p.severity == "error"] or [str(exc)]
            print("\n".join(errors), file=sys.stderr)
            return 1
        except (sqlite3.Error, OSError) as exc:  # --db: not an SQLite file, a device, a folder, no permission
            print(f"analyst: --db {settings.db}: cannot open the store: {exc}", file=sys.stderr)
            return 1
        print(f"analyst: serving on {runner.url}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.stop()
        return 0

    return asyncio.run(serve())
