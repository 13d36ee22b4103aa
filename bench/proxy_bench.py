"""Requests per second and CPU per request of bare mitmdump vs mitmdump with the enforcer addon, in the same run.

Usage: ``.venv/bin/python bench/proxy_bench.py [--duration 4] [--concurrency 16] [--rounds 5] [--slices 5]
[--scenario NAME] [--variant NAME] [--baseline DIR] [--side-by-side] [--no-pin] [--json]``

Pieces:
- origins (a child process, ``--serve-origins``): a plain HTTP and a TLS HTTP/1.1 server on 127.0.0.1 with a 1 KiB
  body, so the proxy, not the origin, is the bottleneck;
- proxies started with the same argv from ``enforcer.proxy.cli.mitmdump_command`` (lazy connections, no flow
  output), one per ``--variant``: ``bare`` (no script), ``noop1`` (a script with one object defining the addon's
  hooks, each doing nothing), ``noop7`` (the same no-op hooks spread over the addon's shape: a composition object and
  6 parts), ``addon-quiet`` (the enforcer addon without events and /metrics: no writer or metrics thread) and
  ``addon`` (``enforcer proxy``'s mitmdump, events and metrics on); ``--baseline DIR`` adds ``baseline``, the addon
  of another tree (before/after in one run). noop7 - noop1 is mitmproxy's hook dispatch over 6 more objects (the
  addon's shape before it registered one object, enforcer/proxy/addon.py); addon-quiet - noop1 is the hooks' own
  work; addon - addon-quiet is the event writer and /metrics threads;
- a load generator (asyncio sockets, bounded concurrency) running each scenario against every variant in turn,
  ``--rounds`` times (the order rotates each round), so drift on the shared CPU hits all alike. Within a round each
  variant's ``--duration`` is cut into ``--slices`` slices taken in turn (its keep-alive connections parked, nothing
  in flight, while the others run): one 5 s window per variant let the machine's drift fall on one variant's few
  seconds (identical trees measured 0.84 against 0.93 of bare in one run). ``--slices 1``: one window each, as before.
  ``--side-by-side`` instead loads all variants at once on CPU 0, each round one window: the scheduler shares the CPU
  between them, so req/s between them compares the CPU one request costs, with whatever else happens hitting all;

Two figures per measurement: requests per second (wall clock; other load on the machine moves it by +-20 %), and the
proxy process's CPU time per request (utime + stime from /proc/PID/stat over the timed window, all threads), which
neighbours move far less. By default the proxies run on CPU 0 and the load generator and origins on CPU 1
(``--no-pin``: anywhere), so the client never competes with the proxy it measures. The window opens once every
client connection is set up (keep-alive scenarios measure requests, not TLS handshakes) and counts the requests
answered inside it; each window is preceded by a 0.5 s warm-up.

Scenarios: ``http-allowed`` (keep-alive GETs, plain HTTP), ``http-allowed-unique`` (the same, every request a path
never seen before: the addon's request memo, enforcer/proxy/decide.py, never hits), ``https-allowed`` (one CONNECT +
TLS per connection, then keep-alive GETs, intercepted by all: the bench policy has a url rule for localhost and
mitmdump intercepts by default), ``https-allowed-newconn`` (new connection, CONNECT, TLS, one GET),
``connect-blocked`` (new connection, CONNECT to a blocked name -> 403 from the addon, 200 from the others).
Targets (issue 16): addon/bare >= 0.95 on plain HTTP, >= 0.98 on keep-alive HTTPS. Reported: medians of the rounds
(and every round) per variant, and each variant against bare (req/s ratio of the medians, ``paired``: the median of
each round's own req/s ratio, and the CPU per request ratio).
No name here is resolved: the blocked CONNECT is answered by the addon; allowed traffic goes to 127.0.0.1/localhost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BODY = b"x" * 1024
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n" % len(BODY) + BODY

BENCH_POLICY = """\
app: bench
name: Bench App
policy:
  effective: 2023-10-30
block:
  - domain: blocked.bench
    category: messaging
  - url: "localhost/blocked/*"
    category: download
"""


# -- origins (child process) -------------------------------------------------------------------------------------
async def _origin_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            writer.write(RESPONSE)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


async def serve_origins(folder: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (folder / "o-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "o-key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(folder / "o-cert.pem", folder / "o-key.pem")
    ctx.set_alpn_protocols(["http/1.1"])
    plain = await asyncio.start_server(_origin_conn, "127.0.0.1", 0, backlog=1024)
    tls = await asyncio.start_server(_origin_conn, "127.0.0.1", 0, ssl=ctx, backlog=1024)
    ports = {"http": plain.sockets[0].getsockname()[1], "https": tls.sockets[0].getsockname()[1]}
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


# -- load generator ----------------------------------------------------------------------------------------------
async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def open_tunnel(proxy: int, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    status = await read_response(reader)
    return reader, writer, status


def client_tls() -> ssl.SSLContext:
    # The bench measures throughput, not trust: mitmproxy's interception certificate is not verified here.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Run:
    """One measurement shared by its client tasks: each sets up its keep-alive connection, then ``await arrived()``;
    the window opens once every task is ready (so connection set-up stays out of a keep-alive figure) and ``turn()``
    stays true until it closes. ``done()`` counts one answered request; requests answered after the window are not
    counted. Sliced (``measure_sliced``): ``turn()`` also parks each task at the closed ``gate`` between the slices
    of its proxy, and ``all_parked`` is set once every task is parked (no request of this proxy in flight)."""

    def __init__(self, tasks: int) -> None:
        self.tasks = tasks
        self.waiting = tasks
        self.all_ready = asyncio.Event()
        self.opened = asyncio.Event()
        self.deadline = float("inf")
        self.counting = False
        self.count = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.parked = 0
        self.all_parked = asyncio.Event()

    async def arrived(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.all_ready.set()
        await self.opened.wait()

    async def turn(self) -> bool:
        if not self.gate.is_set():
            self.parked += 1
            if self.parked == self.tasks:
                self.all_parked.set()
            await self.gate.wait()
            self.parked -= 1
        return time.monotonic() < self.deadline

    def done(self) -> None:
        if self.counting:
            self.count += 1


Scenario = Callable[[int, dict[str, int], Run], Awaitable[None]]


async def http_allowed(proxy: int, ports: dict[str, int], run: Run) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
    req = f"GET http://127.0.0.1:{ports['http']}/qqfile/ok HTTP/1.1\r\nHost: 127.0.0.1:{ports['http']}\r\n\r\n"
    await run.arrived()
    while await run.turn():
        writer.write(req.encode())
        assert await read_response(reader) == 200
        run.done()
    writer.close()


async def http_allowed_unique(proxy: int, ports: dict[str, int], run: Run) -> None:
    # Every request a path never seen before: the addon's request memo never hits (its cost on a miss shows here).
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
    prefix = f"http://127.0.0.1:{ports['http']}/qqfile/{os.urandom(6).hex()}"
    host = f"Host: 127.0.0.1:{ports['http']}\r\n\r\n"
    n = 0
    await run.arrived()
    while await run.turn():
        writer.write(f"GET {prefix}/{n} HTTP/1.1\r\n{host}".encode())
        assert await read_response(reader) == 200
        run.done()
        n += 1
    writer.close()


async def https_allowed(proxy: int, ports: dict[str, int], run: Run) -> None:
    target = f"127.0.0.1:{ports['https']}"  # SNI localhost (a url-rule host): intercepted; no name resolution
    reader, writer, status = await open_tunnel(proxy, target)
    assert status == 200
    await writer.start_tls(client_tls(), server_hostname="localhost")
    req = f"GET /qqfile/ok HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    writer.write(req)  # the first request opens (and handshakes) the upstream side: set-up, before the window
    assert await read_response(reader) == 200
    await run.arrived()
    while await run.turn():
        writer.write(req)
        assert await read_response(reader) == 200
        run.done()
    writer.close()


async def https_allowed_newconn(proxy: int, ports: dict[str, int], run: Run) -> None:
    target = f"127.0.0.1:{ports['https']}"
    await run.arrived()
    while await run.turn():
        reader, writer, status = await open_tunnel(proxy, target)
        assert status == 200
        await writer.start_tls(client_tls(), server_hostname="localhost")
        writer.write(f"GET /qqfile/ok HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        assert await read_response(reader) == 200
        writer.close()
        run.done()


async def connect_blocked(proxy: int, ports: dict[str, int], run: Run) -> None:
    await run.arrived()
    while await run.turn():
        # Bare mitmdump answers 200 (lazy: nothing is dialled until data flows), the addon 403.
        _, writer, status = await open_tunnel(proxy, "www.blocked.bench:443")
        writer.close()
        assert status in (200, 403)
        run.done()


SCENARIOS: dict[str, Scenario] = {
    "http-allowed": http_allowed,
    "http-allowed-unique": http_allowed_unique,
    "https-allowed": https_allowed,
    "https-allowed-newconn": https_allowed_newconn,
    "connect-blocked": connect_blocked,
}


async def run_window(
    scenario: Scenario, proxy: int, ports: dict[str, int], tasks: int, duration: float, pid: int | None
) -> tuple[int, float, float]:
    """(requests answered, seconds, proxy CPU seconds) in one window of ``duration`` after every task set up."""
    run = Run(tasks)
    clients = asyncio.gather(*(scenario(proxy, ports, run) for _ in range(tasks)))
    await run.all_ready.wait()
    cpu0 = proc_cpu(pid) if pid is not None else 0.0
    start = time.monotonic()
    run.deadline = start + duration
    run.counting = True
    run.opened.set()
    await asyncio.sleep(duration)
    run.counting = False  # requests still in flight finish uncounted
    count, elapsed = run.count, time.monotonic() - start
    cpu = proc_cpu(pid) - cpu0 if pid is not None else float("nan")
    await clients
    return count, elapsed, cpu


async def measure_together(
    scenario: Scenario, proxies: dict[str, tuple[int, int]], ports: dict[str, int], duration: float, concurrency: int
) -> dict[str, tuple[float, float]]:
    """``--side-by-side``: every proxy (variant -> (port, pid)) under its own ``concurrency`` clients in one window, at
    the same time, all on one CPU: the scheduler gives each the same share, so whatever slows the machine in that
    window slows them alike, and req/s between them compares the CPU one request costs. (req/s, CPU s/req) each."""
    for tasks, window in ((2, 0.5), (concurrency, duration)):  # warm-up, then the timed window
        runs = {v: Run(tasks) for v in proxies}
        clients = [
            asyncio.gather(*(scenario(port, ports, runs[v]) for _ in range(tasks))) for v, (port, _) in proxies.items()
        ]
        for run in runs.values():
            await run.all_ready.wait()
        cpu0 = {v: proc_cpu(pid) for v, (_, pid) in proxies.items()}
        start = time.monotonic()
        for run in runs.values():
            run.deadline = start + window
            run.counting = True
            run.opened.set()
        await asyncio.sleep(window)
        for run in runs.values():
            run.counting = False
        elapsed = time.monotonic() - start
        cpu = {v: proc_cpu(pid) - cpu0[v] for v, (_, pid) in proxies.items()}
        await asyncio.gather(*clients)
    return {v: (run.count / elapsed, cpu[v] / max(run.count, 1)) for v, run in runs.items()}


async def measure_sliced(
    scenario: Scenario,
    proxies: dict[str, tuple[int, int]],
    ports: dict[str, int],
    duration: float,
    concurrency: int,
    slices: int,
) -> dict[str, tuple[float, float]]:
    """One round of the alternating comparison, interleaved: every proxy (variant -> (port, pid), in this round's
    order) gets ``duration`` seconds in ``slices`` slices taken in turn, its clients parked (keep-alive connections
    open, nothing in flight) while the others run. A slice ends when the last request started in it is answered, so
    its count and its CPU time cover the same work. Drift of the machine over a round reaches every proxy alike: one
    window per proxy per round (``--slices 1``) leaves each proxy a different few seconds. (req/s, CPU s/req) each."""
    for port, _ in proxies.values():
        await run_window(scenario, port, ports, 2, 0.5, None)  # warm-up (certificate generation, caches)
    runs = {v: Run(concurrency) for v in proxies}
    for run in runs.values():
        run.gate.clear()  # parked until their first slice
    clients = [
        asyncio.gather(*(scenario(port, ports, runs[v]) for _ in range(concurrency)))
        for v, (port, _) in proxies.items()
    ]
    for run in runs.values():
        await run.all_ready.wait()
        run.opened.set()
        await run.all_parked.wait()
    totals = {v: [0, 0.0, 0.0] for v in proxies}  # requests, seconds, CPU seconds
    for _ in range(slices):
        for variant, (_, pid) in proxies.items():
            run = runs[variant]
            run.all_parked.clear()
            run.count, run.counting = 0, True
            cpu0, start = proc_cpu(pid), time.monotonic()
            run.gate.set()
            await asyncio.sleep(duration / slices)
            run.gate.clear()
            await run.all_parked.wait()
            elapsed, cpu = time.monotonic() - start, proc_cpu(pid) - cpu0
            run.counting = False
            total = totals[variant]
            total[0] += run.count
            total[1] += elapsed
            total[2] += cpu
    for run in runs.values():
        run.deadline = 0.0  # every client leaves at its next turn
        run.gate.set()
    await asyncio.gather(*clients)
    return {v: (n / max(t, 1e-9), cpu / max(n, 1)) for v, (n, t, cpu) in totals.items()}


async def measure(
    scenario: Scenario, proxy: int, ports: dict[str, int], duration: float, concurrency: int, pid: int | None = None
) -> tuple[float, float]:
    """(requests per second, proxy CPU seconds per request) over the timed window; CPU is NaN without ``pid``."""
    await run_window(scenario, proxy, ports, 2, 0.5, None)  # warm-up (certificate generation, caches)
    count, elapsed, cpu = await run_window(scenario, proxy, ports, concurrency, duration, pid)
    return count / elapsed, cpu / max(count, 1)


# -- variants ----------------------------------------------------------------------------------------------------
# The hooks each part of the enforcer addon defines (enforcer/proxy/addon.py composes them), as no-ops: noop7 has the
# addon's shape (a composition object holding 6 parts), noop1 one object with every hook. Written to a file at run
# time: mitmdump loads them with -s like the real addon.
NOOP_ADDONS = """\
class Lifecycle:
    name = "noop_lifecycle"

    def load(self, loader): pass
    def configure(self, updated): pass
    def running(self): pass
    def done(self): pass
    def client_disconnected(self, client): pass


class Connect:
    name = "noop_connect"

    def http_connect(self, flow): pass


class Tls:
    name = "noop_tls"

    def tls_clienthello(self, data): pass
    def tls_failed_client(self, data): pass


class Server:
    name = "noop_server"

    async def server_connect(self, data): pass
    def server_connected(self, data): pass
    def server_connect_error(self, data): pass


class Request:
    name = "noop_request"

    def requestheaders(self, flow): pass


class Dns:
    name = "noop_dns"

    def dns_request(self, flow): pass


class Seven:
    name = "noop7"

    def __init__(self):
        self.addons = [Lifecycle(), Connect(), Tls(), Server(), Request(), Dns()]


class One(Lifecycle, Connect, Tls, Server, Request, Dns):
    name = "noop1"


addons = [ADDON()]
"""

VARIANTS = ("bare", "noop1", "noop7", "addon-quiet", "addon")
DEFAULT_VARIANTS = ("bare", "addon")


# -- processes ---------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"proxy exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise SystemExit(f"proxy on port {port} did not start")


def proxy_commands(tmp: Path, variants: list[str], baseline: Path | None = None) -> dict[str, tuple[list[str], int]]:
    """The argv and port of each variant: ``enforcer proxy``'s mitmdump argv, less what the variant leaves out."""
    sys.path.insert(0, str(ROOT))
    from enforcer.proxy.cli import add_arguments, mitmdump_command

    blocklists = tmp / "blocklists"
    blocklists.mkdir(exist_ok=True)
    for f in (ROOT / "blocklists").glob("*.yaml"):
        shutil.copy(f, blocklists / f.name)
    (blocklists / "bench.yaml").write_text(BENCH_POLICY, encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_arguments("proxy", parser)
    common = ["--confdir", str(tmp / "confdir"), "--blocklist", str(blocklists)]
    out: dict[str, tuple[list[str], int]] = {}
    for variant in variants:
        port = free_port()
        extra = ["--events", str(tmp / f"events-{variant}.jsonl"), "--metrics", f"127.0.0.1:{free_port()}"]
        argv = [*common, "--listen", f"127.0.0.1:{port}", *(extra if variant in ("addon", "baseline") else [])]
        cmd = mitmdump_command(parser.parse_args([*argv, "--", "--set", "ssl_insecure=true"]))
        if variant.startswith(("bare", "noop")):
            cmd = without_addon(cmd)
        if variant == "baseline" and baseline is not None:
            # The same argv and options with another tree's addon: its enforcer package comes first on the path.
            cmd[cmd.index("-s") + 1] = str(baseline / "enforcer" / "proxy" / "addon.py")
        if variant.startswith("noop"):
            script = tmp / f"{variant}.py"
            script.write_text(NOOP_ADDONS.replace("ADDON", "One" if variant == "noop1" else "Seven"), encoding="utf-8")
            cmd += ["-s", str(script)]
        out[variant] = (cmd, port)
    return out


def without_addon(cmd: list[str]) -> list[str]:
    """The same mitmdump argv without the addon script and its options."""
    i = cmd.index("-s")
    cmd = cmd[:i] + cmd[i + 2 :]
    return [
        a
        for j, a in enumerate(cmd)
        if not (a.startswith("enforcer_") or (a == "--set" and j + 1 < len(cmd) and cmd[j + 1].startswith("enforcer_")))
    ]


def pin(pid: int, cpu: int) -> None:
    """Keep a process (and the threads it starts later) on one CPU, when the machine has it."""
    if cpu < (os.cpu_count() or 1):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {cpu})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per measurement (%(default)s)")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent client connections (%(default)s)")
    ap.add_argument("--rounds", type=int, default=5, help="alternations of the variants per scenario (%(default)s)")
    ap.add_argument("--scenario", action="append", choices=list(SCENARIOS), help="run only these")
    ap.add_argument(
        "--variant",
        action="append",
        choices=VARIANTS,
        help="proxies to compare (repeatable; bare always runs; default: " + ", ".join(DEFAULT_VARIANTS) + ")",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run variant 'baseline': the addon (events and metrics on) from DIR/enforcer, e.g. an older "
        "tree's enforcer/ unpacked with git archive (default: none)",
    )
    ap.add_argument(
        "--slices",
        type=int,
        default=5,
        help="alternating rounds: each variant's --duration is taken in this many slices, the variants in turn "
        "(1: one window per variant per round, as before; default %(default)s)",
    )
    ap.add_argument(
        "--side-by-side",
        action="store_true",
        help="instead of alternating: load every variant at once, all sharing CPU 0, each round one window (a noise-"
        "resistant comparison of CPU per request; the req/s are shares of one CPU, not each proxy's own throughput)",
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin the proxies to CPU 0 and the client to CPU 1")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    ap.add_argument(
        "--profile",
        metavar="SCENARIO",
        choices=list(SCENARIOS),
        help="instead: run the addon's mitmdump under cProfile for one scenario and print the hooks' share of its CPU",
    )
    ap.add_argument(
        "--dispatch",
        action="store_true",
        help="instead: time mitmproxy's hook dispatch in-process (the walk over mitmdump's addons plus each script) "
        "for the 8 events of one plain HTTP request",
    )
    ap.add_argument("--serve-origins", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_origins:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # stopped by the parent with SIGINT: no traceback per connection
        asyncio.run(serve_origins(Path(args.serve_origins)))
        return 0
    if args.dispatch:
        asyncio.run(dispatch_walk(args.rounds))
        return 0
    variants = ["bare", *(v for v in args.variant or DEFAULT_VARIANTS if v != "bare")]
    if args.baseline is not None:
        if not (args.baseline / "enforcer" / "proxy" / "addon.py").is_file():
            ap.error(f"--baseline {args.baseline}: no enforcer/proxy/addon.py there")
        variants.append("baseline")
    variants = list(dict.fromkeys(variants))
    if not args.no_pin:
        pin(0, 1)  # the load generator (and the origins it starts) on CPU 1, the proxies on CPU 0

    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp_s:
        tmp = Path(tmp_s)
        try:
            origins = subprocess.Popen(
                [sys.executable, __file__, "--serve-origins", str(tmp)], stdout=subprocess.PIPE, start_new_session=True
            )
            procs.append(origins)
            assert origins.stdout is not None
            ports = json.loads(origins.stdout.readline())
            commands = proxy_commands(tmp, variants, args.baseline)
            if args.profile:
                cmd, port = commands["addon"] if "addon" in commands else proxy_commands(tmp, ["addon"])["addon"]
                profile_share(args, tmp, cmd, port, ports, procs)
                return 0
            pids: dict[str, int] = {}
            for variant, (cmd, port) in commands.items():
                log = open(tmp / f"mitmdump-{variant}.log", "wb")  # noqa: SIM115 - lives as long as the process
                env = {**os.environ, "PYTHONPATH": str(args.baseline)} if variant == "baseline" else None
                procs.append(
                    subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
                )
                if not args.no_pin:
                    pin(procs[-1].pid, 0)
                wait_port(port, procs[-1])
                pids[variant] = procs[-1].pid
            for name in args.scenario or list(SCENARIOS):
                results[name] = run_scenario(SCENARIOS[name], args, commands, pids, ports)
        finally:
            stop_groups(procs)
    report(results, args)
    return 0


def stop_groups(procs: list[subprocess.Popen[Any]], grace: float = 10.0) -> None:
    """Stop every process and its group (``start_new_session``): SIGINT (mitmdump shuts down cleanly), SIGKILL after
    ``grace`` seconds."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGINT)
    for p in procs:
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def run_scenario(
    scenario: Scenario,
    args: argparse.Namespace,
    commands: dict[str, tuple[list[str], int]],
    pids: dict[str, int],
    ports: dict[str, int],
) -> dict[str, list[tuple[float, float]]]:
    """Every round of one scenario: (req/s, CPU s/req) per variant and round, in round order."""
    variants = list(commands)
    out: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    if args.side_by_side:
        together = {v: (commands[v][1], pids[v]) for v in variants}
        for _ in range(args.rounds):
            window = asyncio.run(measure_together(scenario, together, ports, args.duration, args.concurrency))
            for variant, figures in window.items():
                out[variant].append(figures)
        return out
    for r in range(args.rounds):
        # Rotate the order each round: no variant always runs right after another one warmed the CPU.
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        if args.slices > 1:
            proxies = {v: (commands[v][1], pids[v]) for v in order}
            window = asyncio.run(measure_sliced(scenario, proxies, ports, args.duration, args.concurrency, args.slices))
            for variant, figures in window.items():
                out[variant].append(figures)
            continue
        for variant in order:
            _, port = commands[variant]
            out[variant].append(
                asyncio.run(measure(scenario, port, ports, args.duration, args.concurrency, pids[variant]))
            )
    return out


class _ScriptHolder:
    """What mitmproxy's ``Script`` shows the addon manager: ``addons`` is a property giving the loaded module."""

    def __init__(self, ns: object) -> None:
        self.ns = ns
        self.name = "scriptmanager:bench"

    @property
    def addons(self) -> list[object]:
        return [self.ns]


async def dispatch_walk(rounds: int) -> None:
    """Per request, the time mitmproxy spends finding hooks: mitmdump's own addons (a real ``DumpMaster``) plus one
    script, walked with ``AddonManager._iter_hooks`` for the 8 events of a plain HTTP request (4 hooks, each followed
    by ``update``). Variants, alternating in one process: bare (no script), noop7 (7 objects, the addon's former
    shape), noop1 (one object) and the enforcer addon script as it ships. Process CPU time, medians of the rounds."""
    from mitmproxy import hooks
    from mitmproxy.addons.script import load_script
    from mitmproxy.options import Options
    from mitmproxy.proxy import layers  # noqa: F401 - defines the HTTP hooks in hooks.all_hooks
    from mitmproxy.test import tflow
    from mitmproxy.tools.dump import DumpMaster

    sys.path.insert(0, str(ROOT))
    from enforcer.proxy.cli import ADDON_PATH

    master = DumpMaster(Options(), with_termlog=False)
    manager = master.addons
    loader = next(a for a in manager.chain if type(a).__name__ == "ScriptLoader")
    with tempfile.TemporaryDirectory(prefix="proxy-dispatch-") as tmp_s:
        scripts: dict[str, list[object]] = {"bare": []}
        for variant in ("noop7", "noop1"):
            path = Path(tmp_s) / f"{variant}.py"
            path.write_text(NOOP_ADDONS.replace("ADDON", "One" if variant == "noop1" else "Seven"), encoding="utf-8")
            scripts[variant] = [_ScriptHolder(load_script(str(path)))]
        scripts["addon"] = [_ScriptHolder(load_script(str(ADDON_PATH)))]
    f = tflow.tflow(resp=True)
    events: list[hooks.Hook] = []
    registry: dict[str, Any] = dict(hooks.all_hooks)  # the hook classes by name (their constructors take the flow)
    for name in ("requestheaders", "request", "responseheaders", "response"):
        events += [registry[name](f), hooks.UpdateHook([f])]
    per_request: dict[str, list[float]] = {k: [] for k in scripts}
    n = 500
    for _ in range(max(rounds, 3) * 3):
        for variant, held in scripts.items():
            loader.addons = held
            t = time.process_time()
            for _ in range(n):
                for event in events:
                    for addon in manager.chain:
                        for _found in manager._iter_hooks(addon, event):
                            pass
            per_request[variant].append((time.process_time() - t) / n * 1e6)
    loader.addons = []
    bare = statistics.median(per_request["bare"])
    print(f"dispatch per plain HTTP request (8 events), {len(per_request['bare'])} alternating rounds, process CPU:")
    for variant, values in per_request.items():
        med = statistics.median(values)
        print(f"  {variant:6} {med:7.1f} us  (+{med - bare:5.1f} us over bare; min {min(values):.1f})")


def profile_share(
    args: argparse.Namespace,
    tmp: Path,
    addon_cmd: list[str],
    port: int,
    ports: dict[str, int],
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """A noise-free complement to the throughput ratio: CPU seconds in the addon's hooks per flow vs per flow overall.

    cProfile slows everything alike, so the ratio (hook time per flow / process CPU time per flow) estimates the
    addon's share of mitmdump's work for that scenario, whatever the neighbours on the machine are doing.
    """
    import pstats

    out = tmp / "mitmdump.prof"
    code = (
        f"import cProfile, sys; sys.argv = {['mitmdump', *addon_cmd[1:]]!r}; "
        f"from mitmproxy.tools.main import mitmdump; cProfile.run('mitmdump()', {str(out)!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, start_new_session=True)
    procs.append(proc)
    wait_port(port, proc)
    cpu0 = proc_cpu(proc.pid)
    rate, _ = asyncio.run(measure(SCENARIOS[args.profile], port, ports, args.duration, args.concurrency))
    cpu = proc_cpu(proc.pid) - cpu0
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(30)
    stats = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]
    hooks = ("http_connect", "tls_clienthello", "server_connect", "requestheaders", "client_disconnected")
    # The hooks live in the addon parts composed by enforcer/proxy/addon.py (tunnel, server, request, lifecycle).
    hook_time = sum(v[3] for k, v in stats.items() if "enforcer/proxy/" in k[0] and k[2] in hooks)
    flows = rate * args.duration
    print(f"profile {args.profile}: {rate:.1f} flows/s under cProfile, mitmdump CPU {cpu:.2f}s for ~{flows:.0f} flows")
    print(f"  addon hooks: {hook_time:.3f}s cumulative (incl. warm-up) = {hook_time / cpu:.1%} of mitmdump's CPU time")
    calls = sum(v[1] for k, v in stats.items() if "enforcer/proxy/" in k[0] and k[2] in hooks)
    print(f"  hook calls: {calls}; the hooks by cumulative time (calls, seconds):")
    for k, v in sorted(stats.items(), key=lambda kv: -kv[1][3]):
        if "enforcer/proxy/" in k[0] and k[2] in hooks:
            print(f"    {Path(k[0]).name}:{k[1]} {k[2]}: {v[1]} calls, {v[3]:.3f}s")
    print("  enforcer functions by own time (calls, seconds):")
    own = sorted(((k, v) for k, v in stats.items() if "/enforcer/" in k[0]), key=lambda kv: -kv[1][2])
    for k, v in own[:10]:
        print(f"    {Path(k[0]).name}:{k[1]} {k[2]}: {v[1]} calls, {v[2]:.3f}s")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(results: dict[str, dict[str, list[tuple[float, float]]]], args: argparse.Namespace) -> None:
    # Medians: on a shared 2-core machine a single window can lose a third of its throughput to a neighbour.
    summary: dict[str, dict[str, dict[str, object]]] = {}
    for name, by_variant in results.items():
        bare_rps = statistics.median(x[0] for x in by_variant["bare"])
        bare_cpu = statistics.median(x[1] for x in by_variant["bare"])
        summary[name] = {}
        for variant, rounds in by_variant.items():
            rps = statistics.median(x[0] for x in rounds)
            cpu = statistics.median(x[1] for x in rounds)
            bare_rounds = by_variant["bare"]
            # The same round's bare and variant ran back to back (or together): the median of those paired ratios
            # cancels what drifts between rounds, which the ratio of the two medians does not.
            paired = [x[0] / b[0] for x, b in zip(rounds, bare_rounds, strict=False) if b[0]]
            summary[name][variant] = {
                "rps_median": round(rps, 1),
                "rps_vs_bare_paired": round(statistics.median(paired), 3) if paired else float("nan"),
                "cpu_us_per_req_median": round(cpu * 1e6, 1),
                "rps_vs_bare": round(rps / bare_rps, 3) if bare_rps else float("nan"),
                "cpu_vs_bare": round(cpu / bare_cpu, 3) if bare_cpu else float("nan"),
                "rounds_rps": [round(x[0], 1) for x in rounds],
                "rounds_cpu_us": [round(x[1] * 1e6, 1) for x in rounds],
            }
    blocked_vs: dict[
        str, float
    ] = {}  # the addon answers a blocked CONNECT: it should not cost more than an allowed one
    if "connect-blocked" in summary and "addon" in summary["connect-blocked"]:
        blocked = float(summary["connect-blocked"]["addon"]["rps_median"])  # type: ignore[arg-type]
        for other in ("https-allowed-newconn", "http-allowed", "https-allowed"):
            if other in summary and "addon" in summary[other]:
                rps = float(summary[other]["addon"]["rps_median"])  # type: ignore[arg-type]
                blocked_vs[f"connect-blocked / {other} (addon req/s)"] = round(blocked / rps, 2)
    if args.json:
        doc = {
            "duration": args.duration,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "pinned": not args.no_pin,
            "side_by_side": args.side_by_side,
        }
        print(json.dumps({**doc, "results": summary, "blocked_vs_allowed": blocked_vs}, indent=2))
        return
    pinned = "proxies on CPU 0, client on CPU 1" if not args.no_pin else "not pinned"
    how = "side-by-side (all variants at once)" if args.side_by_side else "rotating"
    print(f"proxy_bench: {args.rounds} {how} round(s) x {args.duration:g}s, concurrency {args.concurrency}, {pinned}")
    print(
        f"{'scenario':22} {'variant':12} {'req/s':>8} {'/bare':>6} {'paired':>6} {'CPU us/req':>11} {'/bare':>6}"
        "   (medians; paired: median of the rounds' own ratios)"
    )
    for name, rows in summary.items():
        for variant, row in rows.items():
            print(
                f"{name:22} {variant:12} {row['rps_median']:8.1f} {row['rps_vs_bare']:6.3f} "
                f"{row['rps_vs_bare_paired']:6.3f} {row['cpu_us_per_req_median']:11.1f} {row['cpu_vs_bare']:6.3f}"
            )
    for name, rows in summary.items():
        for variant, row in rows.items():
            print(f"  {name} {variant}: req/s {row['rounds_rps']} | CPU us/req {row['rounds_cpu_us']}")
    for k, v in blocked_vs.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    sys.exit(main())
