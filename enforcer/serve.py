"""``enforcer serve``: the resolver, the proxy and the analyst together, on embedded defaults, from one config.

Each component runs as its own child process (``python -m enforcer dns|proxy|analyst``): mitmproxy owns its event
loop and signal handling, a crash in one cannot corrupt another, and each child flushes its events on SIGTERM.
This module only merges the settings, starts the children, waits until each answers, prints where each user should
point, relays their logs with a prefix, and stops all of them when one dies or on Ctrl-C / SIGTERM.

It never prints a summary it cannot stand behind:

- ``probe_addresses``: before anything is printed or created (no token, no child), every address serve will use is
  bound once and released (DNS over UDP and TCP, the proxy, the analyst, each /metrics). The first that fails is one
  line naming the address and the component (``enforcer serve: cannot listen on 127.0.0.1:5353/udp (dns): Address
  already in use``) and exit status 1.
- Readiness talks to serve's own children: a child counts as ready only when its address answers AND the listening
  socket belongs to that child or one of its descendants (``owns_listener``, from /proc). Another instance (or any
  program) that holds the port cannot pass for the child that failed to bind it.
- An explicit ``--require-app`` is checked against the shared policy before anything starts (one line, exit 1); the
  resolver and the proxy get it too and refuse later policies without those apps.

Settings per child: a ``serve`` flag beats the config file's section for that child (``dns:``, ``proxy:``,
``analyst:``), which beats the defaults below; the config file is also passed to each child so its other keys apply.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import secrets
import signal
import socket
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, ReplaceAppend, default_blocklist
from .healthcheck import probe_dns
from .net import format_host_port, probe_bind, split_host_port
from .policy.reloader import REQUIRE_APP_HELP, parse_required_apps
from .proxy.cli import default_confdir

DEFAULTS = {
    "data_dir": "var",
    "dns_listen": "127.0.0.1:5353",
    "dns_metrics": "127.0.0.1:9153",
    "proxy_listen": "127.0.0.1:8080",
    "proxy_metrics": "127.0.0.1:9154",
    "analyst_listen": "127.0.0.1:8000",
}
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def add_arguments(command: str, p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=DEFAULTS["data_dir"], help="events, analyst DB, CA and token (default: var/)")
    p.add_argument("--blocklist", metavar="PATH", help="blocklist file or folder shared by all (default: blocklists/)")
    p.add_argument("--dns-listen", metavar="HOST:PORT", help=f"resolver address (default: {DEFAULTS['dns_listen']})")
    p.add_argument("--upstream", action=ReplaceAppend, help="resolver upstream (repeatable; default: /etc/resolv.conf)")
    p.add_argument("--require-app", metavar="APP,APP", default=None, help=REQUIRE_APP_HELP + "; for resolver and proxy")
    p.add_argument(
        "--dns-metrics", metavar="HOST:PORT", help=f"resolver /metrics address (default: {DEFAULTS['dns_metrics']})"
    )
    p.add_argument("--proxy-listen", metavar="HOST:PORT", help=f"proxy address (default: {DEFAULTS['proxy_listen']})")
    p.add_argument(
        "--proxy-metrics", metavar="HOST:PORT", help=f"proxy /metrics address (default: {DEFAULTS['proxy_metrics']})"
    )
    p.add_argument(
        "--analyst-listen", metavar="HOST:PORT", help=f"analyst address (default: {DEFAULTS['analyst_listen']})"
    )
    p.add_argument(
        "--feeds-refresh",
        action="store_true",
        help="the resolver updates the blocklist's URL feeds in the background (default: off)",
    )
    p.add_argument("--no-dns", action="store_true", help="do not start the resolver")
    p.add_argument("--no-proxy", action="store_true", help="do not start the proxy")
    p.add_argument("--no-analyst", action="store_true", help="do not start the analyst")


@dataclass
class Child:
    name: str
    argv: list[str]
    ready: Any  # async callable -> bool
    listens: list[tuple[str, str]] = field(default_factory=list)  # (HOST:PORT, "udp"|"tcp") this child binds
    proc: asyncio.subprocess.Process | None = None
    relay: list[asyncio.Task[None]] = field(default_factory=list)


def _section(args: argparse.Namespace, name: str) -> dict[str, Any]:
    data = getattr(args, "_config_data", None) or {}
    section = data.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{args.config}:1:1: section '{name}' must be a mapping")
    return {str(k).replace("_", "-"): v for k, v in section.items()}


def _pick(flag: Any, section: dict[str, Any], key: str, default: Any) -> Any:
    if flag is not None:
        return flag
    if key in section:
        return section[key]
    return default


def plan(args: argparse.Namespace) -> tuple[list[Child], dict[str, Any]]:
    """The children to start and the summary facts, from flags, config and defaults."""
    data = Path(args.data_dir)
    cfg = ["--config", args.config] if args.config else []
    log = ["--log-level", args.log_level]
    # --blocklist given to serve is shared by all three; otherwise each child takes its own config section's
    # blocklist or the default (the same folder unless the config says otherwise).
    shared = ["--blocklist", args.blocklist] if args.blocklist else []
    required = parse_required_apps(getattr(args, "require_app", None))
    # The resolver and the proxy enforce --require-app; without it each keeps its own default (or config section).
    require = [] if required is None else ["--require-app", ",".join(required)]

    def head(command: str) -> list[str]:
        own = require if command in ("dns", "proxy") else []
        return [sys.executable, "-m", "enforcer", command, *cfg, *log, *shared, *own]

    info: dict[str, Any] = {"blocklist": args.blocklist or default_blocklist(), "data": str(data)}
    info["events"] = str(data / "events")
    children: list[Child] = []
    if not args.no_dns:
        children.append(_plan_dns(args, head("dns"), info))
    if not args.no_proxy:
        children.append(_plan_proxy(args, head("proxy"), info))
    if not args.no_analyst:
        children.append(_plan_analyst(args, head("analyst"), info))
    return children, info


def _plan_dns(args: argparse.Namespace, argv: list[str], info: dict[str, Any]) -> Child:
    dns = _section(args, "dns")
    listens = _pick(args.dns_listen, dns, "listen", DEFAULTS["dns_listen"])
    listens = [str(x) for x in listens] if isinstance(listens, list) else [str(listens)]
    listen = listens[0]
    metrics = _pick(args.dns_metrics, dns, "metrics", DEFAULTS["dns_metrics"])
    ev = _pick(None, dns, "events", str(Path(info["events"]) / "dns.jsonl"))
    argv = [*argv, "--events", ev, "--metrics", metrics]
    for address in listens:
        argv += ["--listen", address]
    for up in args.upstream or []:
        argv += ["--upstream", up]
    if getattr(args, "feeds_refresh", False):
        argv.append("--feeds-refresh")
    host, port = split_host_port(listen)
    info.update(dns=listen, dns_metrics=metrics, dns_events=ev)
    binds = [(a, proto) for a in listens for proto in ("udp", "tcp")] + ([(metrics, "tcp")] if metrics else [])
    return Child("dns", argv, lambda h=host, p=port: _dns_ready(h, p), binds)


def _plan_proxy(args: argparse.Namespace, argv: list[str], info: dict[str, Any]) -> Child:
    px = _section(args, "proxy")
    listen = _pick(args.proxy_listen, px, "listen", DEFAULTS["proxy_listen"])
    metrics = _pick(args.proxy_metrics, px, "metrics", DEFAULTS["proxy_metrics"])
    ev = _pick(None, px, "events", str(Path(info["events"]) / "proxy.jsonl"))
    confdir = _pick(None, px, "confdir", default_confdir(info["data"]))
    argv = [*argv, "--listen", listen, "--events", ev, "--metrics", metrics, "--confdir", confdir]
    host, port = split_host_port(listen)
    info.update(proxy=listen, proxy_metrics=metrics, proxy_events=ev, ca=str(Path(confdir) / "mitmproxy-ca-cert.pem"))
    binds = [(listen, "tcp")] + ([(metrics, "tcp")] if metrics else [])
    return Child("proxy", argv, lambda h=host, p=port: _tcp_ready(h, p), binds)


def _plan_analyst(args: argparse.Namespace, argv: list[str], info: dict[str, Any]) -> Child:
    an = _section(args, "analyst")
    data, events = Path(info["data"]), Path(info["events"])
    listen = _pick(args.analyst_listen, an, "listen", DEFAULTS["analyst_listen"])
    token_file = _pick(None, an, "token-file", str(data / "analyst.token"))
    db = _pick(None, an, "db", str(data / "analyst.sqlite"))
    sources = an.get("events") or [
        info.get("dns_events", str(events / "dns.jsonl")),
        info.get("proxy_events", str(events / "proxy.jsonl")),
    ]
    sources = sources if isinstance(sources, list) else [sources]
    argv = [*argv, "--listen", listen, "--db", db, "--token-file", token_file, "--events", *map(str, sources)]
    host, port = split_host_port(listen)
    url = f"http://{format_host_port(host, port)}"
    info.update(analyst=url + "/", analyst_token_file=token_file, analyst_db=db)
    return Child("analyst", argv, lambda u=url: _http_ready(u + "/healthz"), [(listen, "tcp")])


async def _dns_ready(host: str, port: int) -> bool:
    return await asyncio.to_thread(_safe, probe_dns, host, port, 1.0)


async def _tcp_ready(host: str, port: int) -> bool:
    def connect() -> bool:
        with socket.create_connection((host, port), timeout=1.0):
            return True

    return await asyncio.to_thread(_safe, connect)


async def _http_ready(url: str) -> bool:
    def get() -> bool:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(200 <= resp.status < 300)

    return await asyncio.to_thread(_safe, get)


def _safe(fn: Any, *a: Any) -> bool:
    try:
        return bool(fn(*a))
    except (OSError, ValueError):
        return False


def probe_addresses(children: list[Child]) -> str | None:
    """Bind and release every address the children will listen on; the first failure as one line, else None."""
    for child in children:
        for address, proto in child.listens:
            try:
                host, port = split_host_port(address)
            except ValueError as exc:
                return f"enforcer serve: {child.name} address {address!r}: {exc}"
            if port == 0:
                continue  # the child picks a free port: nothing to collide with
            try:
                probe_bind(host, port, proto)
            except OSError as exc:
                why = exc.strerror or str(exc)
                return f"enforcer serve: cannot listen on {format_host_port(host, port)}/{proto} ({child.name}): {why}"
    return None


def _descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (from /proc; empty where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name (2nd field) is in parentheses and may hold spaces: the ppid follows the last ')'.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = {pid}, [pid]
    while todo:
        for kid in children.get(todo.pop(), []):
            if kid not in found:
                found.add(kid)
                todo.append(kid)
    return found


def _socket_inodes(pids: set[int]) -> set[int]:
    inodes: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def owns_listener(pid: int, port: int, proto: str) -> bool | None:
    """Whether a socket bound to ``port`` (listening, for TCP) belongs to ``pid`` or a descendant.

    None where /proc cannot tell (not Linux): the caller then relies on the probe-bind done before start."""
    tables = [f"/proc/net/{proto}", f"/proc/net/{proto}6"]
    if not any(os.path.exists(t) for t in tables):
        return None
    bound: set[int] = set()
    for table in tables:
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh, None)
            for line in fh:
                cols = line.split()
                local, state, inode = cols[1], cols[3], int(cols[9])
                if int(local.rsplit(":", 1)[1], 16) == port and (proto == "udp" or state == "0A"):
                    bound.add(inode)
    return bool(bound & _socket_inodes(_descendants(pid)))


def _child_owns(child: Child) -> bool:
    """Every address of ``child`` is held by the child itself (or /proc cannot tell)."""
    assert child.proc is not None
    for address, proto in child.listens:
        port = split_host_port(address)[1]
        if port and owns_listener(child.proc.pid, port, proto) is False:
            return False
    return True


def _check_required_apps(args: argparse.Namespace, info: dict[str, Any]) -> str | None:
    """With an explicit ``--require-app``: the shared policy's missing apps as one line (before any child starts)."""
    required = parse_required_apps(getattr(args, "require_app", None))
    if not required:
        return None
    from .policy.blocklist import load_policy
    from .policy.model import PolicyError
    from .policy.reloader import missing_apps, required_app_error

    try:
        missing = missing_apps(load_policy(info["blocklist"]), required)
    except PolicyError:
        return None  # the children report the policy's own errors, PATH:LINE:COL each
    if not missing:
        return None
    return "enforcer serve: " + str(required_app_error([info["blocklist"]], missing).problems[0])


def ensure_token(path: Path) -> str:
    """Create the analyst token file (0600) on first start; reuse it afterwards."""
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(f"analyst token file {path}: cannot create it: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


async def _relay(name: str, stream: asyncio.StreamReader) -> None:
    prefix = f"[{name}] ".encode()
    out = sys.stderr.buffer
    while True:
        line = await stream.readline()
        if not line:
            return
        out.write(prefix + line)
        out.flush()


def reachable(address: str) -> str:
    """HOST:PORT with a wildcard host (0.0.0.0, ::) replaced by an address clients can use: the host's address on its
    default route, or a placeholder when it has none (a container without a network, a published port)."""
    host, port = split_host_port(address)
    if host not in ("0.0.0.0", "::", ""):
        return address if ":" not in host else format_host_port(host, port)
    family, probe = (socket.AF_INET6, "2001:db8::1") if host == "::" else (socket.AF_INET, "192.0.2.1")
    try:
        # connect() on UDP only picks the route's source address; nothing is sent.
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            found = str(s.getsockname()[0])
    except OSError:
        return f"<this host's address>:{port}"
    return format_host_port(found, port)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def summary(info: dict[str, Any], token: str | None) -> str:
    lines = [f"enforcer serve: policy {info['blocklist']}, data in {info['data']}/"]
    if "dns" in info:
        host, port = split_host_port(reachable(info["dns"]))
        wide = " on every address" if reachable(info["dns"]) != info["dns"] else ""
        lines.append(
            f"  DNS resolver  {info['dns']} (UDP+TCP{wide})  point clients here; "
            f"try: dig @{host} -p {port} weixin.qq.com"
        )
        if _loopback(host):
            # The default is for a first look on this machine; a phone cannot reach it (nor a port other than 53).
            lines.append(
                "                this machine only: for devices, --dns-listen 0.0.0.0:53 (docs/operators.md, 2)"
            )
    if "proxy" in info:
        lines.append(f"  HTTP(S) proxy {info['proxy']}  set as the devices' proxy")
        lines.append(f"                CA certificate to install on devices: {info['ca']}")
    analyst = ""
    if "analyst" in info:
        analyst = "http://" + reachable(info["analyst"].removeprefix("http://").rstrip("/")) + "/"
        lines.append(f"  Analyst       {analyst}  token: {token} (in {info['analyst_token_file']})")
    metrics = [
        f"{k} http://{reachable(info[k + '_metrics'])}/metrics" for k in ("dns", "proxy") if k + "_metrics" in info
    ]
    if analyst:
        metrics.append(f"analyst {analyst}metrics")
    if metrics:
        lines.append("  Metrics       " + ", ".join(metrics))
    lines.append(f"  Events        {info['events']}/")
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


async def serve(args: argparse.Namespace) -> int:
    children, info = plan(args)
    if not children:
        print("serve: nothing to run (all of --no-dns, --no-proxy, --no-analyst given)", file=sys.stderr)
        return 2
    problem = probe_addresses(children)
    if problem is not None:
        print(problem, file=sys.stderr, flush=True)
        return 1
    problem = await asyncio.to_thread(_check_required_apps, args, info)
    if problem is not None:
        print(problem, file=sys.stderr, flush=True)
        return 1
    Path(info["events"]).mkdir(parents=True, exist_ok=True)
    token = ensure_token(Path(info["analyst_token_file"])) if "analyst" in info else None

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, RuntimeError):  # SIGUSR1: the event writers reopen their files
        loop.add_signal_handler(signal.SIGUSR1, _forward_usr1, children)

    status = 0
    try:
        for child in children:
            child.proc = await asyncio.create_subprocess_exec(
                *child.argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C goes to serve; serve stops the children in order
            )
            assert child.proc.stdout is not None
            child.relay.append(asyncio.create_task(_relay(child.name, child.proc.stdout)))
        if not await _wait_ready(children, stop):
            status = 1
        else:
            print(summary(info, token), flush=True)
            status = await _supervise(children, stop)
    finally:
        await _stop_all(children)
    return status


def _forward_usr1(children: list[Child]) -> None:
    for child in children:
        # Only the children that write events handle SIGUSR1; for the others it would be fatal.
        if child.name in ("dns", "proxy") and child.proc is not None and child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGUSR1)


async def _wait_ready(children: list[Child], stop: asyncio.Event) -> bool:
    deadline = loop_time() + READY_TIMEOUT
    pending = list(children)
    while pending:
        if stop.is_set():
            return False
        for child in list(pending):
            assert child.proc is not None
            if child.proc.returncode is not None:
                print(
                    f"serve: {child.name} exited with status {child.proc.returncode} during start-up "
                    "(its log lines above say why)",
                    file=sys.stderr,
                )
                return False
            # Answering is not enough: the listener must be this child's, not another instance's on the same port.
            if await child.ready() and await asyncio.to_thread(_child_owns, child):
                pending.remove(child)
        if loop_time() > deadline:
            names = ", ".join(c.name for c in pending)
            print(f"serve: {names} not ready after {READY_TIMEOUT:.0f} s", file=sys.stderr)
            return False
        if pending:
            await asyncio.sleep(0.2)
    return True


def loop_time() -> float:
    return asyncio.get_running_loop().time()


async def _supervise(children: list[Child], stop: asyncio.Event) -> int:
    waits = {asyncio.create_task(c.proc.wait()): c for c in children if c.proc is not None}
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*waits, stopper], return_when=asyncio.FIRST_COMPLETED)
    for task in [*waits, stopper]:
        if task not in done:
            task.cancel()
    if stopper in done:
        print("serve: stopping", file=sys.stderr, flush=True)
        return 0
    for task in done:
        child = waits[task]
        print(f"serve: {child.name} exited unexpectedly (status {task.result()}); stopping the others", file=sys.stderr)
    return 1


async def _stop_all(children: list[Child]) -> None:
    for child in children:
        if child.proc is not None and child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
    for child in children:
        if child.proc is None:
            continue
        try:
            await asyncio.wait_for(child.proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            print(f"serve: {child.name} did not stop in {STOP_TIMEOUT:.0f} s; killing it", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            await child.proc.wait()
        for task in child.relay:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 2.0)


def run(command: str, args: argparse.Namespace) -> int:
    return asyncio.run(serve(args))
