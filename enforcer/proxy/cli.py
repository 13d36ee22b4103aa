"""``enforcer proxy``: check the flags, then run mitmdump with the enforcer addon and wait for it.

- ``add_arguments``: ``--listen``, ``--blocklist`` (repeatable), ``--events``, ``--metrics``, ``--confdir``,
  ``--blocked-connect page|refuse`` (how a CONNECT to a blocked host is answered), ``--auth htpasswd:FILE`` (proxy
  logins through mitmproxy's proxyauth; the user goes into hit events as ``user.name``),
  ``--addon-path``; anything after ``--`` is handed to mitmdump unchanged.
- ``default_confdir``: the one mitmproxy CA directory default, shared with ``serve`` so a host has one CA.
- ``mitmdump_command``: the exact argv (lazy connections so nothing upstream is contacted before the addon decides,
  ``flow_detail=0`` so the console carries the addon's and mitmproxy's messages, not one line per flow).
- ``run``: validates the policy first (one ``PATH:LINE:COL`` line per problem, exit 1), then starts mitmdump as a
  child, forwards SIGINT/SIGTERM/SIGHUP to it and returns its exit code. ``--addon-path`` prints ``ADDON_PATH``
  (for ``mitmdump -s`` in an operator's own mitmproxy, without activating the venv) and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from enforcer.config import ConfigError, add_blocklist_argument
from enforcer.policy.reloader import REQUIRE_APP_HELP, parse_required_apps
from enforcer.proxy.decide import BLOCKED_CONNECT_MODES, PAGE
from enforcer.proxy.logins import LoginError, auth_problems, htpasswd_path

ADDON_PATH = Path(__file__).resolve().with_name("addon.py")
DEFAULT_LISTEN = "127.0.0.1:8080"
CA_CERT_NAME = "mitmproxy-ca-cert.pem"


def default_confdir(data_dir: str | Path = "var") -> str:
    """``<data dir>/mitmproxy``: ``proxy`` and ``serve`` both default here, so clients trust one CA per host."""
    return str(Path(data_dir) / "mitmproxy")


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", help="proxy address (default: %(default)s)"
    )
    add_blocklist_argument(parser)
    parser.add_argument("--require-app", metavar="APP,APP", default=None, help=REQUIRE_APP_HELP)
    parser.add_argument("--events", metavar="PATH", help="write hit events (ECS JSON Lines) to this file")
    parser.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus /metrics here")
    parser.add_argument(
        "--confdir",
        default=default_confdir(),
        metavar="DIR",
        help="mitmproxy configuration and CA directory (default: %(default)s)",
    )
    parser.add_argument(
        "--blocked-connect",
        choices=BLOCKED_CONNECT_MODES,
        default=PAGE,
        help="a CONNECT to a blocked host: 'page' accepts it without any upstream connection and shows the block "
        "page inside the tunnel (to clients that trust the mitmproxy CA; others fail the TLS handshake, still "
        "blocked); 'refuse' answers the CONNECT with 403 (default: %(default)s)",
    )
    parser.add_argument(
        "--auth",
        metavar="htpasswd:FILE",
        help="require a proxy login from an Apache htpasswd file (bcrypt or {SHA} lines; 407 otherwise); the user "
        "goes into hit events as user.name (default: no login)",
    )
    parser.add_argument(
        "--addon-path", action="store_true", help="print the addon file's path (for mitmdump -s) and exit"
    )
    parser.add_argument("mitmdump_args", nargs="*", metavar="-- MITMDUMP_ARGS", help="passed to mitmdump as is")


def mitmdump_executable() -> list[str]:
    """mitmdump from this interpreter's environment (the addon must import enforcer from the same one)."""
    local = Path(sys.executable).with_name("mitmdump")
    if local.exists():
        return [str(local)]
    return [sys.executable, "-c", "import sys; from mitmproxy.tools.main import mitmdump; sys.exit(mitmdump())"]


def mitmdump_command(args: argparse.Namespace) -> list[str]:
    from enforcer.net import split_host_port

    try:
        host, port = split_host_port(args.listen)
    except ValueError as exc:
        raise ConfigError(f"--listen: {exc}") from None
    if args.metrics:
        try:
            split_host_port(args.metrics)
        except ValueError as exc:
            raise ConfigError(f"--metrics: {exc}") from None
    cmd = [
        *mitmdump_executable(),
        "--listen-host",
        host,
        "--listen-port",
        str(port),
        "--set",
        f"confdir={args.confdir}",
        "--set",
        "connection_strategy=lazy",
        "--set",
        "flow_detail=0",
        "-s",
        str(ADDON_PATH),
        "--set",
        "enforcer_blocklist=" + ",".join(str(Path(p).resolve()) for p in args.blocklist),
    ]
    if args.events:
        cmd += ["--set", f"enforcer_events={Path(args.events).resolve()}"]
    if args.metrics:
        cmd += ["--set", f"enforcer_metrics={args.metrics}"]
    required = parse_required_apps(getattr(args, "require_app", None))
    cmd += ["--set", "enforcer_require_apps=" + ("auto" if required is None else ",".join(required))]
    cmd += ["--set", f"enforcer_blocked_connect={getattr(args, 'blocked_connect', PAGE)}"]
    if getattr(args, "auth", None):
        try:
            cmd += ["--set", f"proxyauth=@{htpasswd_path(args.auth)}"]
        except LoginError as exc:
            raise ConfigError(str(exc)) from None
    return cmd + list(args.mitmdump_args or [])


def _cannot_start(cmd: list[str], listen: str) -> str | None:
    if not shutil.which(cmd[0]) and not os.path.exists(cmd[0]):
        return f"cannot find mitmdump ({cmd[0]}): install mitmproxy"
    if (busy := _port_in_use(listen)) is not None:
        # Before mitmdump, whose own message spans lines and suggests a --mode flag this command does not have.
        return f"enforcer proxy: cannot listen on {listen}: {busy} (choose another --listen)"
    return None


def _port_in_use(listen: str) -> str | None:
    """Why ``listen`` cannot take the proxy's listener (a port another process holds), or None."""
    from enforcer.net import probe_bind, split_host_port

    try:
        probe_bind(*split_host_port(listen), "tcp")
    except (OSError, ValueError) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    return None


def run(command: str, args: argparse.Namespace) -> int:
    from enforcer.policy import PolicyError, load_policy
    from enforcer.policy.reloader import missing_apps, required_app_error

    if args.addon_path:
        print(ADDON_PATH)
        return 0
    for p in args.blocklist:
        if not Path(p).exists():
            print(f"{p}: no such file or directory", file=sys.stderr)
            return 1
    try:
        policy = load_policy([Path(p) for p in args.blocklist])
        missing = missing_apps(policy, parse_required_apps(getattr(args, "require_app", None)) or [])
        if missing:
            raise required_app_error(args.blocklist, missing)
    except PolicyError as exc:
        for problem in exc.problems:
            if problem.severity == "error":
                print(problem, file=sys.stderr)
        return 1
    if problems := auth_problems(args.auth):
        print("\n".join(problems), file=sys.stderr)
        return 1
    cmd = mitmdump_command(args)
    if (why := _cannot_start(cmd, args.listen)) is not None:
        print(why, file=sys.stderr)
        return 1
    print(f"mitmproxy CA: {Path(args.confdir).expanduser().resolve() / CA_CERT_NAME}", file=sys.stderr, flush=True)
    child = subprocess.Popen(cmd)

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):  # USR1: reopen the event file
        with contextlib.suppress(ValueError):  # not the main thread: the caller handles signals
            signal.signal(sig, forward)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:  # pragma: no cover - SIGINT is forwarded, keep waiting for the child
            continue
