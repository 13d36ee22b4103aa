"""``enforcer`` command line: one argparse parser, each subcommand implemented in the module of its component.

A command module provides ``add_arguments(command, parser)`` and ``run(command, args) -> int``; modules are imported
only to build the parser (they keep heavy imports inside ``run``). Exit codes: 0 success, 1 invalid input, 2 usage.

- ``COMMANDS``: command -> (module, one-line help), in ``enforcer --help`` order.
- ``available_commands()``: the commands whose module is installed.
- ``build_parser(only=None)``: the parser and each command's subparser; ``only`` fills in the flags of that one
  command (``""``: none) and leaves the others with their one-line help (``enforcer --help`` reads the same).
- ``main(argv)``: the console script. It builds the flags of the command it runs only: the command modules import
  what their flags' defaults and help need (``enforcer dns`` the policy reloader, hence asyncio and prometheus;
  ``enforcer feeds`` aiohttp), about half a second of imports that ``enforcer check`` or ``lookup`` never use.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from typing import Any

from . import __version__
from .config import ConfigError, check_sections, find_config_arg, load_config, section_defaults

# command -> (module, one-line help). The order is the order of `enforcer --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("enforcer.policy.cli", "validate blocklist files or folders"),
    "lookup": ("enforcer.policy.cli", "show the verdict for domains, URLs or IP addresses"),
    "export": ("enforcer.policy.cli", "export the policy for BIND/Unbound (RPZ), dnsmasq, squid, hosts, nftables, ..."),
    "dns": ("enforcer.dns.cli", "run the DNS resolver (sinkhole + forwarder)"),
    "proxy": ("enforcer.proxy.cli", "run mitmdump with the enforcer addon"),
    "analyst": ("enforcer.analyst.cli", "run the analyst web service (dashboard, API, metrics)"),
    "report": ("enforcer.analyst.cli", "compliance report from event files"),
    "serve": ("enforcer.serve", "run resolver, proxy and analyst together on embedded defaults"),
    "rpz-log": ("enforcer.rpz.logs", "turn BIND/Unbound RPZ hit logs into enforcer events (enforcer.rpz)"),
    "feeds": ("enforcer.feeds.cli", "update the URL feeds of a blocklist: fetch, check, diff, swap (feeds update)"),
    "discover": ("enforcer.discover.cli", "propose candidate rules from events and the query log (never applied)"),
    "profile": ("enforcer.profile", "MDM profiles for encrypted DNS with a ClientID (Apple, Android, Windows)"),
}


def _exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package is missing
        return False


def available_commands() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in COMMANDS.items() if _exists(spec[0])}


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``enforcer`` parser and its subparsers; with ``only``, the other commands' flags are left out."""
    parser = argparse.ArgumentParser(
        prog="enforcer",
        description="Network-level enforcement of app bans: DNS sinkhole, mitmproxy addon, compliance review.",
    )
    parser.add_argument("--version", action="version", version=f"enforcer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers: dict[str, argparse.ArgumentParser] = {}
    for name, (module_name, help_text) in available_commands().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", metavar="FILE", help="YAML config; keys mirror the long flags (e.g. dns.listen)")
        p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        subparsers[name] = p
        if only is not None and name != only:
            continue
        importlib.import_module(module_name).add_arguments(name, p)
    return parser, subparsers


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The first word that is not an option is the command (the top level has only --help and --version; every other
    # option belongs to a command and follows it). Without a known command (--help, a typo) no command's flags are
    # needed: the top-level help and argparse's "invalid choice" list only the names and their one-line help.
    command = next((a for a in argv if not a.startswith("-")), None)
    parser, subparsers = build_parser(command if command in COMMANDS else "")
    config_path = find_config_arg(argv)
    if config_path is not None and command in subparsers:
        try:
            data, node = load_config(config_path)
            check_sections(data, node, set(COMMANDS), config_path)
            where: dict[str, Any] = {}
            subparsers[command].set_defaults(
                **section_defaults(subparsers[command], data, node, command, config_path, where),
                _config_data=data,
                _config_where=where,
            )
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 1
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command's own usage, not the top level's
        (subparsers.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args.command, args) or 0)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except OSError as exc:
        # The last resort for a path the command did not check itself (a folder it may not read, a parent it may not
        # write): the path and the reason in one line, not a traceback. The stack is in the debug log.
        logging.getLogger("enforcer").debug("%s failed", args.command, exc_info=True)
        path = f"{exc.filename}: " if exc.filename else ""
        print(f"enforcer {args.command}: {path}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
