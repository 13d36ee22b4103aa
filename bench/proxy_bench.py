"""Requests per second through bare mitmdump vs mitmdump with the enforcer addon, measured in the same run.

Usage: ``.venv/bin/python bench/proxy_bench.py [--duration 5] [--concurrency 16] [--rounds 2] [--json]``

Pieces:
- origins (a child process, ``--serve-origins``): a plain HTTP and a TLS HTTP/1.1 server on 127.0.0.1 with a 1 KiB
  body, so the proxy, not the origin, is the bottleneck;
- two proxies started with the same argv from ``enforcer.proxy.cli.mitmdump_command`` (lazy connections, no flow
  output): bare mitmdump, and ``enforcer proxy``'s mitmdump with the addon (events and metrics on);
- a load generator (asyncio sockets, bounded concurrency) running each scenario against bare and addon alternately,
  ``--rounds`` times, so drift on the shared CPU hits both alike.

Scenarios: ``http-allowed`` (keep-alive GETs, plain HTTP), ``https-allowed`` (one CONNECT + TLS per connection, then
keep-alive GETs, intercepted by both: the bench policy has a url rule for localhost), ``https-allowed-newconn``
(new connection, CONNECT, TLS, one GET), ``connect-blocked`` (new connection, CONNECT to a blocked name -> 403).
Targets: addon/bare >= 0.95 on allowed flows; connect-blocked at least as fast as https-allowed-newconn. Reported:
medians of the alternating rounds (and every round), addon/bare per scenario, blocked/allowed for the addon.
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


Scenario = Callable[[int, dict[str, int], Callable[[], bool]], Awaitable[int]]


async def http_allowed(proxy: int, ports: dict[str, int], go: Callable[[], bool]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
    req = f"GET http://127.0.0.1:{ports['http']}/qqfile/ok HTTP/1.1\r\nHost: 127.0.0.1:{ports['http']}\r\n\r\n"
    n = 0
    while go():
        writer.write(req.encode())
        assert await read_response(reader) == 200
        n += 1
    writer.close()
    return n


async def https_allowed(proxy: int, ports: dict[str, int], go: Callable[[], bool]) -> int:
    target = f"127.0.0.1:{ports['https']}"  # SNI localhost (a url-rule host): intercepted; no name resolution
    reader, writer, status = await open_tunnel(proxy, target)
    assert status == 200
    await writer.start_tls(client_tls(), server_hostname="localhost")
    req = f"GET /qqfile/ok HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    n = 0
    while go():
        writer.write(req)
        assert await read_response(reader) == 200
        n += 1
    writer.close()
    return n


async def https_allowed_newconn(proxy: int, ports: dict[str, int], go: Callable[[], bool]) -> int:
    target = f"127.0.0.1:{ports['https']}"
    n = 0
    while go():
        reader, writer, status = await open_tunnel(proxy, target)
        assert status == 200
        await writer.start_tls(client_tls(), server_hostname="localhost")
        writer.write(f"GET /qqfile/ok HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
        assert await read_response(reader) == 200
        writer.close()
        n += 1
    return n


async def connect_blocked(proxy: int, ports: dict[str, int], go: Callable[[], bool]) -> int:
    n = 0
    while go():
        # Bare mitmdump answers 200 (lazy: nothing is dialled until data flows), the addon 403.
        _, writer, status = await open_tunnel(proxy, "www.blocked.bench:443")
        writer.close()
        assert status in (200, 403)
        n += 1
    return n


SCENARIOS: dict[str, Scenario] = {
    "http-allowed": http_allowed,
    "https-allowed": https_allowed,
    "https-allowed-newconn": https_allowed_newconn,
    "connect-blocked": connect_blocked,
}


async def measure(scenario: Scenario, proxy: int, ports: dict[str, int], duration: float, concurrency: int) -> float:
    # Warm-up (certificate generation, caches), then the timed window.
    warm_end = time.monotonic() + 0.5
    await asyncio.gather(*(scenario(proxy, ports, lambda: time.monotonic() < warm_end) for _ in range(2)))
    end = time.monotonic() + duration
    start = time.monotonic()
    counts = await asyncio.gather(*(scenario(proxy, ports, lambda: time.monotonic() < end) for _ in range(concurrency)))
    return sum(counts) / (time.monotonic() - start)


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


def proxy_commands(tmp: Path) -> tuple[list[str], list[str], int, int]:
    sys.path.insert(0, str(ROOT))
    from enforcer.proxy.cli import add_arguments, mitmdump_command

    blocklists = tmp / "blocklists"
    blocklists.mkdir()
    for f in (ROOT / "blocklists").glob("*.yaml"):
        shutil.copy(f, blocklists / f.name)
    (blocklists / "bench.yaml").write_text(BENCH_POLICY, encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_arguments("proxy", parser)
    bare_port, addon_port = free_port(), free_port()
    common = ["--confdir", str(tmp / "confdir"), "--blocklist", str(blocklists)]
    addon_args = parser.parse_args(
        [
            *common,
            "--listen",
            f"127.0.0.1:{addon_port}",
            "--events",
            str(tmp / "events.jsonl"),
            "--metrics",
            f"127.0.0.1:{free_port()}",
            "--",
            "--set",
            "ssl_insecure=true",
        ]
    )
    bare_args = parser.parse_args([*common, "--listen", f"127.0.0.1:{bare_port}", "--", "--set", "ssl_insecure=true"])
    addon_cmd = mitmdump_command(addon_args)
    bare_cmd = mitmdump_command(bare_args)
    # Bare: the very same argv without the addon script and its options.
    i = bare_cmd.index("-s")
    del bare_cmd[i : i + 2]
    bare_cmd = [
        a
        for j, a in enumerate(bare_cmd)
        if not (
            a.startswith("enforcer_")
            or (a == "--set" and j + 1 < len(bare_cmd) and bare_cmd[j + 1].startswith("enforcer_"))
        )
    ]
    return bare_cmd, addon_cmd, bare_port, addon_port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (%(default)s)")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent client connections (%(default)s)")
    ap.add_argument("--rounds", type=int, default=5, help="bare/addon alternations per scenario (%(default)s)")
    ap.add_argument("--scenario", action="append", choices=list(SCENARIOS), help="run only these")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    ap.add_argument(
        "--profile",
        metavar="SCENARIO",
        choices=list(SCENARIOS),
        help="instead: run the addon's mitmdump under cProfile for one scenario and print the hooks' share of its CPU",
    )
    ap.add_argument("--serve-origins", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_origins:
        with contextlib.suppress(KeyboardInterrupt):  # stopped by the parent with SIGINT
            asyncio.run(serve_origins(Path(args.serve_origins)))
        return 0

    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp_s:
        tmp = Path(tmp_s)
        try:
            origins = subprocess.Popen(
                [sys.executable, __file__, "--serve-origins", str(tmp)], stdout=subprocess.PIPE, start_new_session=True
            )
            procs.append(origins)
            assert origins.stdout is not None
            ports = json.loads(origins.stdout.readline())
            bare_cmd, addon_cmd, bare_port, addon_port = proxy_commands(tmp)
            if args.profile:
                profile_share(args, tmp, addon_cmd, addon_port, ports, procs)
                return 0
            for cmd, port in ((bare_cmd, bare_port), (addon_cmd, addon_port)):
                log = open(tmp / f"mitmdump-{port}.log", "wb")  # noqa: SIM115 - lives as long as the process
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
                wait_port(port, procs[-1])
            results: dict[str, dict[str, list[float]]] = {}
            for name in args.scenario or list(SCENARIOS):
                results[name] = {"bare": [], "addon": []}
                for _ in range(args.rounds):
                    for label, port in (("bare", bare_port), ("addon", addon_port)):
                        rate = asyncio.run(measure(SCENARIOS[name], port, ports, args.duration, args.concurrency))
                        results[name][label].append(rate)
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGINT)
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
    report(results, args)
    return 0


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
    cpu0 = _proc_cpu(proc.pid)
    rate = asyncio.run(measure(SCENARIOS[args.profile], port, ports, args.duration, args.concurrency))
    cpu = _proc_cpu(proc.pid) - cpu0
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(30)
    stats = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]
    hooks = ("http_connect", "tls_clienthello", "server_connect", "requestheaders", "client_disconnected")
    # The hooks live in the addon parts composed by enforcer/proxy/addon.py (tunnel, server, request, lifecycle).
    hook_time = sum(v[3] for k, v in stats.items() if "enforcer/proxy/" in k[0] and k[2] in hooks)
    flows = rate * args.duration
    print(f"profile {args.profile}: {rate:.1f} flows/s under cProfile, mitmdump CPU {cpu:.2f}s for ~{flows:.0f} flows")
    print(f"  addon hooks: {hook_time:.3f}s cumulative (incl. warm-up) = {hook_time / cpu:.1%} of mitmdump's CPU time")


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    # Medians: on a shared 2-core machine a single window can lose a third of its throughput to a neighbour.
    summary: dict[str, dict[str, object]] = {}
    med: dict[str, tuple[float, float]] = {}
    for name, r in results.items():
        bare, addon = statistics.median(r["bare"]), statistics.median(r["addon"])
        med[name] = (bare, addon)
        summary[name] = {
            "bare_rps_median": round(bare, 1),
            "addon_rps_median": round(addon, 1),
            "addon_vs_bare": round(addon / bare, 3),
            "rounds_bare": [round(x, 1) for x in r["bare"]],
            "rounds_addon": [round(x, 1) for x in r["addon"]],
        }
    blocked_vs: dict[str, float] = {}
    if "connect-blocked" in med:
        for other in ("https-allowed-newconn", "http-allowed", "https-allowed"):
            if other in med:
                blocked_vs[f"connect-blocked / {other} (addon)"] = round(med["connect-blocked"][1] / med[other][1], 2)
    if args.json:
        doc = {"duration": args.duration, "concurrency": args.concurrency, "rounds": args.rounds}
        print(json.dumps({**doc, "results": summary, "blocked_vs_allowed": blocked_vs}, indent=2))
        return
    print(f"proxy_bench: {args.rounds} alternating round(s) x {args.duration:g}s, concurrency {args.concurrency}")
    print(f"{'scenario':24} {'bare req/s':>11} {'addon req/s':>12} {'addon/bare':>11}   (medians)")
    for name, s in summary.items():
        print(f"{name:24} {s['bare_rps_median']:11.1f} {s['addon_rps_median']:12.1f} {s['addon_vs_bare']:11.3f}")
    for name, s in summary.items():
        print(f"  {name}: bare {s['rounds_bare']} | addon {s['rounds_addon']}")
    for k, v in blocked_vs.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    sys.exit(main())
