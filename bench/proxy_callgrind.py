"""Instructions per proxied request (valgrind callgrind) of bare mitmdump, a no-op script and the enforcer addon.

Usage: ``.venv/bin/python bench/proxy_callgrind.py [--requests 415] [--warmup 300] [--connections 16] [--reps 2]
[--scenario http-allowed|https-allowed ...] [--variants bare,noop,addon] [--setup-in-window] [--out DIR] [--json]
[--verbose]``

What it measures: the CPU instructions (callgrind's ``Ir``, every thread of the proxy process) that one mitmdump
spends on a fixed number of proxied requests. Unlike req/s or CPU time this does not depend on the machine's load or
speed, so a difference of 1-2 % between variants is visible in one run (``bench/proxy_bench.py`` measures the same
variants in wall-clock and CPU time). Variants, all from the argv ``enforcer proxy --events FILE --metrics
HOST:PORT`` builds (``enforcer.proxy.cli.mitmdump_command`` through ``bench/proxy_bench.py``'s ``proxy_commands``,
which adds ``--set ssl_insecure=true`` for the local origin's certificate, the shipped blocklists and its bench
policy):

- ``addon``: that argv as it is: mitmdump exactly as ``enforcer proxy`` starts it (``-s enforcer/proxy/addon.py``,
  its event writer and /metrics threads);
- ``bare``: the same mitmdump options without the addon (``proxy_bench.without_addon``);
- ``noop``: bare plus ``-s`` a script whose one addon object defines the enforcer addon's hooks, each doing nothing
  (proxy_bench's ``noop1``): mitmproxy's cost of dispatching every event to a script.

Scenarios: ``http-allowed`` (plain HTTP GETs through the proxy, keep-alive) and ``https-allowed`` (CONNECT, TLS
intercepted with the mitmproxy CA, then keep-alive GETs), both allowed, the same path every request, against
proxy_bench's local origins (plain and TLS HTTP/1.1 servers, 1 KiB body). Everything listens on 127.0.0.1; no name
is resolved.

How, per scenario, variant and repetition (a fresh process each time, run one after the other):

1. ``valgrind --tool=callgrind --instr-atstart=no`` runs the proxy (``PYTHONHASHSEED=0``), pinned to CPU 0 (the
   client and origins on CPU 1) when there are two; uninstrumented, start-up costs nothing in the figure.
2. The client opens ``--connections`` keep-alive connections (HTTPS: CONNECT, TLS, and the first request, which opens
   the upstream side) and sends ``--warmup`` requests over them (interception certificate, caches, memos).
3. ``callgrind_control -z`` and ``-i on PID``; the client sends ``--requests`` requests over the same connections (the
   same share on each, every connection sending its next request when the previous answer has arrived); then
   ``callgrind_control -i off`` and ``-d`` (dump). Nothing is in flight when instrumentation is switched.
   ``--setup-in-window``: the warm-up connections are closed before, and the window also holds opening the
   connections (CONNECT and both TLS handshakes for HTTPS) and closing them, with ``--settle`` seconds for the
   proxy to finish: per-connection costs spread over requests/connections requests.
4. The dump's ``totals:`` line is the window's instructions; divided by ``--requests``. The garbage collector's
   share is read from the same file: the inclusive cost and calls of CPython's ``gc_collect_main`` (collections of
   any generation) and the full collections among them (calls of ``_PyList_ClearFreeList``, which only a full
   collection makes; CPython 3.11).

Printed: per scenario, instructions per request for every variant and repetition (and the GC's part), then the
medians over repetitions and each variant's ratio to bare (plus addon/noop), with and without the GC's part.

Reading it: repetitions are fresh processes given the same inputs, so they agree closely (within ~0.2 %), and a full
collection falls at the same place in each: whether one falls inside the window is decided by the request count, not
by chance. A full pass of bare mitmdump walks every object alive since start-up (the addon freezes those after
start-up, enforcer/proxy/lifecycle.py; its own full passes are cheap): the 415-request window holds one of bare's and
none of the addon's, which adds ~1 % to bare alone. The "excl. GC" columns compare the rest; for the GC's amortised
share use a longer window and read the full-GC counts (``--requests 2400 --variants bare,addon``, about 20 minutes
for both scenarios and 2 reps, holds one full collection of each).

Every wait has a timeout, and every child process (origins, proxies) is stopped at the end, also on error.
Callgrind runs the proxy ~50x slower (~17 requests/s here): the defaults (415 requests, 300 warm-up, 2 reps, 2
scenarios, 3 variants) take about 7 minutes on a 2-core machine. Needs ``valgrind`` (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import proxy_bench as pb

SCENARIOS = ("http-allowed", "https-allowed")
VARIANTS = ("bare", "noop", "addon")
PATH = "/qqfile/ok"  # proxy_bench's path: allowed by the bench policy (only localhost/blocked/* is a url rule)
GC_FUNCTION = "gc_collect_main"  # CPython 3.11 (this venv's): every collection, young or full, runs through it
# Called once per full collection only (gc_collect_main -> clear_freelists, for the oldest generation), in 3.11.
FULL_GC_MARKER = "_PyList_ClearFreeList"
CONTROL_TIMEOUT = 60.0  # seconds for one callgrind_control command

T = TypeVar("T")
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]


@dataclass
class Sample:
    """One measured window: a fresh proxy process, ``requests`` requests with instrumentation on."""

    scenario: str
    variant: str
    rep: int
    requests: int
    instructions: int
    gc_instructions: int
    gc_calls: int
    full_gcs: int
    seconds: float  # the window's wall clock under callgrind: progress output only, not a result

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests

    @property
    def per_request_no_gc(self) -> float:
        return (self.instructions - self.gc_instructions) / self.requests


# -- the client --------------------------------------------------------------------------------------------------
async def open_conn(scenario: str, proxy: int, ports: dict[str, int]) -> Conn:
    """One keep-alive connection through the proxy and the request it repeats."""
    if scenario == "http-allowed":
        target = f"127.0.0.1:{ports['http']}"
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
        return reader, writer, f"GET http://{target}{PATH} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
    target = f"127.0.0.1:{ports['https']}"  # SNI localhost (a url-rule host): the addon intercepts, like bare does
    reader, writer, status = await pb.open_tunnel(proxy, target)
    if status != 200:
        raise RuntimeError(f"CONNECT {target}: status {status}")
    await writer.start_tls(pb.client_tls(), server_hostname="localhost")
    return reader, writer, f"GET {PATH} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


async def send(conns: list[Conn], total: int) -> None:
    """``total`` requests over ``conns``, the same share (+-1) on each, one in flight per connection."""

    async def one(conn: Conn, n: int) -> None:
        reader, writer, req = conn
        for _ in range(n):
            writer.write(req)
            status = await pb.read_response(reader)
            if status != 200:
                raise RuntimeError(f"request answered with {status}")

    k = len(conns)
    await asyncio.gather(*(one(c, total // k + (i < total % k)) for i, c in enumerate(conns)))


async def close(conns: list[Conn], timeout: float = 30.0) -> None:
    """Close every connection and wait (bounded) until each is closed (TLS: close_notify sent)."""
    for _, writer, _ in conns:
        writer.close()

    async def closed(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(closed(w) for _, w, _ in conns)), timeout)


async def bounded(aw: Awaitable[T], timeout: float, what: str) -> T:
    try:
        return await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        raise RuntimeError(f"{what}: no answer within {timeout:g} s") from None


async def drive(
    scenario: str, proxy: int, pid: int, ports: dict[str, int], args: argparse.Namespace, out: Path
) -> float:
    """Warm up, then the instrumented window (see the module docstring); ends with the dump written. Returns the
    window's wall-clock seconds (for progress output only)."""
    t = args.phase_timeout
    conns = [await bounded(open_conn(scenario, proxy, ports), t, "connect") for _ in range(args.connections)]
    try:
        await bounded(send(conns, args.warmup), t, "warm-up")
        if args.setup_in_window:
            await close(conns)
            conns = []
            await asyncio.sleep(args.settle)
        control(pid, "-z")
        control(pid, "-i", "on")
        started = time.monotonic()
        if args.setup_in_window:
            conns = [await bounded(open_conn(scenario, proxy, ports), t, "connect") for _ in range(args.connections)]
        await bounded(send(conns, args.requests), t, "measured requests")
        if args.setup_in_window:
            await close(conns)
            conns = []
            await asyncio.sleep(args.settle)
        control(pid, "-i", "off")
        seconds = time.monotonic() - started
        control(pid, "-d")
    finally:
        await close(conns)
    deadline = time.monotonic() + CONTROL_TIMEOUT
    while not dump_file(out).exists():  # written by the proxy's process after the command returned
        if time.monotonic() > deadline:
            raise RuntimeError(f"no callgrind dump {dump_file(out)}")
        await asyncio.sleep(0.2)
    return seconds


# -- callgrind ---------------------------------------------------------------------------------------------------
def control(pid: int, *command: str) -> None:
    """``callgrind_control COMMAND PID``, checked (vgdb reaches the process even while it waits in epoll)."""
    done = subprocess.run(
        ["callgrind_control", *command, str(pid)], capture_output=True, text=True, timeout=CONTROL_TIMEOUT
    )
    if done.returncode != 0 or "OK" not in done.stdout:
        raise RuntimeError(f"callgrind_control {' '.join(command)} {pid}: {done.stdout}{done.stderr}")


def dump_file(out: Path) -> Path:
    """The file of the first ``callgrind_control -d`` (callgrind appends the dump's number)."""
    return out.with_name(out.name + ".1")


@dataclass
class Dump:
    """What one callgrind output file says about its window."""

    instructions: int  # the ``totals:`` line (``summary:`` when there is none)
    gc_instructions: int  # inclusive cost of every call to GC_FUNCTION
    gc_calls: int  # collections of any generation
    full_gcs: int  # full (oldest generation) collections: calls to FULL_GC_MARKER


def read_dump(path: Path) -> Dump:
    """The window's figures from a callgrind output file (``--compress-strings`` on or off).

    In the format a call is ``cfn=`` (the callee), ``calls=COUNT ...``, then a cost line whose last field is the
    inclusive cost of those calls; the GC's cost is the sum of those lines over every call site of GC_FUNCTION."""
    total = summary = None
    names: dict[str, str] = {}
    calls: dict[str, int] = {GC_FUNCTION: 0, FULL_GC_MARKER: 0}
    gc_ir = 0
    callee = ""
    take_cost = False
    ref = re.compile(r"^c?fn=\((\d+)\)(?: (.*))?$")
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if take_cost:
                gc_ir += int(line.split()[-1])
                take_cost = False
            elif line.startswith(("fn=", "cfn=")):
                m = ref.match(line.rstrip("\n"))  # compressed: "(id) name" the first time, "(id)" after
                name = line.split("=", 1)[1].strip() if m is None else names.setdefault(m.group(1), m.group(2) or "")
                if line.startswith("cfn="):
                    callee = name
            elif line.startswith("calls="):
                if callee in calls:
                    calls[callee] += int(line.split("=", 1)[1].split()[0])
                    take_cost = callee == GC_FUNCTION
            elif line.startswith("totals:"):
                total = int(line.split()[1])
            elif line.startswith("summary:"):
                summary = int(line.split()[1])
    found = total if total is not None else summary
    if found is None:
        raise RuntimeError(f"{path}: no totals: or summary: line")
    return Dump(found, gc_ir, calls[GC_FUNCTION], calls[FULL_GC_MARKER])


# -- processes ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list to put child processes in; every one (its whole process group) is stopped on the way out."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        stop(procs)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    pb.stop_groups(procs, 30.0)  # a proxy under valgrind takes longer to stop
    procs.clear()


def start_origins(tmp: Path, procs: list[subprocess.Popen[bytes]]) -> dict[str, int]:
    """proxy_bench's origins (plain and TLS HTTP/1.1 on 127.0.0.1) in a child process; their ports."""
    origins = subprocess.Popen(
        [sys.executable, pb.__file__, "--serve-origins", str(tmp)],
        stdout=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    procs.append(origins)
    assert origins.stdout is not None
    ready: dict[str, int] = {}

    def read() -> None:
        assert origins.stdout is not None
        ready.update(json.loads(origins.stdout.readline()))

    thread_read(read, 60, "origins")
    return ready


def thread_read(fn: Callable[[], None], timeout: float, what: str) -> None:
    """Run a blocking read in a thread, bounded: a child that never answers fails the run instead of hanging it."""
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise RuntimeError(f"{what}: not ready within {timeout:g} s")


def make_ca(confdir: Path) -> None:
    """The mitmproxy CA, made once before any measured proxy starts (every run then loads the same one)."""
    from mitmproxy.certs import CertStore

    confdir.mkdir(parents=True, exist_ok=True)
    CertStore.from_store(confdir, "mitmproxy", 2048)


def variant_command(variant: str, tmp: Path) -> tuple[list[str], int]:
    """The argv and listening port of one variant (see the module docstring), on a fresh port."""
    cmd, port = pb.proxy_commands(tmp, ["addon"])["addon"]  # enforcer proxy's argv, --events and --metrics on
    if variant == "addon":
        return cmd, port
    cmd = pb.without_addon(cmd)
    if variant == "noop":
        script = tmp / "noop.py"
        script.write_text(pb.NOOP_ADDONS.replace("ADDON", "One"), encoding="utf-8")
        cmd += ["-s", str(script)]
    return cmd, port


def measure(
    scenario: str,
    variant: str,
    rep: int,
    tmp: Path,
    ports: dict[str, int],
    args: argparse.Namespace,
    procs: list[subprocess.Popen[bytes]],
) -> Sample:
    """One fresh proxy under callgrind, one instrumented window, the proxy stopped; the figures."""
    cmd, port = variant_command(variant, tmp)
    out = args.out / f"callgrind.{scenario}.{variant}.{rep}.out"
    for old in (out, dump_file(out)):
        old.unlink(missing_ok=True)
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    log_path = args.out / f"mitmdump.{scenario}.{variant}.{rep}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*valgrind, *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
    procs.append(proc)
    try:
        pb.pin(proc.pid, 0)
        try:
            pb.wait_port(port, proc, timeout=args.start_timeout)
        except SystemExit as exc:
            raise RuntimeError(f"{variant}: {exc} (log: {log_path})") from None
        seconds = asyncio.run(drive(scenario, port, proc.pid, ports, args, out))
    finally:
        stop([proc])
        procs.remove(proc)
    if args.verbose and rep == 1:
        print(f"  {variant} argv: {' '.join(cmd)}", file=sys.stderr)
    d = read_dump(dump_file(out))
    return Sample(
        scenario, variant, rep, args.requests, d.instructions, d.gc_instructions, d.gc_calls, d.full_gcs, seconds
    )


# -- report ------------------------------------------------------------------------------------------------------
def summarise(samples: list[Sample]) -> dict[str, dict[str, dict[str, float]]]:
    """Per scenario and variant: medians over repetitions of Ir/request (with and without GC) and ratios to bare."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for scenario in dict.fromkeys(s.scenario for s in samples):
        rows = [s for s in samples if s.scenario == scenario]
        med = {
            v: (
                statistics.median(s.per_request for s in rows if s.variant == v),
                statistics.median(s.per_request_no_gc for s in rows if s.variant == v),
            )
            for v in dict.fromkeys(s.variant for s in rows)
        }
        bare = med["bare"]
        out[scenario] = {
            v: {
                "ir_per_request": round(m[0]),
                "vs_bare": round(m[0] / bare[0], 4),
                "ir_per_request_no_gc": round(m[1]),
                "vs_bare_no_gc": round(m[1] / bare[1], 4),
            }
            for v, m in med.items()
        }
        if "addon" in med and "noop" in med:
            out[scenario]["addon/noop"] = {
                "vs_noop": round(med["addon"][0] / med["noop"][0], 4),
                "vs_noop_no_gc": round(med["addon"][1] / med["noop"][1], 4),
            }
    return out


def report(samples: list[Sample], args: argparse.Namespace) -> None:
    summary = summarise(samples)
    if args.json:
        doc = {
            "requests": args.requests,
            "warmup": args.warmup,
            "connections": args.connections,
            "reps": args.reps,
            "setup_in_window": args.setup_in_window,
            "samples": [{**asdict(s), "per_request": round(s.per_request)} for s in samples],
            "summary": summary,
        }
        print(json.dumps(doc, indent=2))
        return
    window = "connection set-up and close inside the window" if args.setup_in_window else "keep-alive"
    print(
        f"proxy_callgrind: {args.requests} requests over {args.connections} connections ({window}) after "
        f"{args.warmup} warm-up requests, {args.reps} rep(s), PYTHONHASHSEED=0; Ir = instructions, all threads"
    )
    head = f"{'scenario':14} {'variant':7} {'rep':>3} {'Ir total':>14} {'Ir/request':>12}"
    print(f"{head} {'GC Ir/req':>10} {'GC calls':>8} {'full GCs':>8}")
    for s in samples:
        print(
            f"{s.scenario:14} {s.variant:7} {s.rep:3d} {s.instructions:14,d} {s.per_request:12,.0f} "
            f"{s.gc_instructions / s.requests:10,.0f} {s.gc_calls:8d} {s.full_gcs:8d}"
        )
    print()
    print(f"{'scenario':14} {'variant':7} {'median Ir/req':>13} {'/bare':>7} {'excl. GC':>10} {'/bare':>7}")
    for scenario, rows in summary.items():
        for variant, row in rows.items():
            if variant == "addon/noop":
                continue
            print(
                f"{scenario:14} {variant:7} {row['ir_per_request']:13,.0f} {row['vs_bare']:7.4f} "
                f"{row['ir_per_request_no_gc']:10,.0f} {row['vs_bare_no_gc']:7.4f}"
            )
        if "addon/noop" in rows:
            r = rows["addon/noop"]
            print(f"{scenario:14} addon/noop {r['vs_noop']:.4f} (excl. GC {r['vs_noop_no_gc']:.4f})")


# -- main --------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--requests", type=int, default=415, help="requests in the instrumented window (%(default)s)")
    ap.add_argument("--warmup", type=int, default=300, help="requests before it, same connections (%(default)s)")
    ap.add_argument("--connections", type=int, default=16, help="keep-alive client connections (%(default)s)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions, each a fresh process (%(default)s)")
    ap.add_argument(
        "--scenario", action="append", choices=SCENARIOS, help="repeatable (default: " + ", ".join(SCENARIOS) + ")"
    )
    ap.add_argument(
        "--variants", default="bare,noop,addon", help="comma-separated, of " + ", ".join(VARIANTS) + " (%(default)s)"
    )
    ap.add_argument(
        "--setup-in-window",
        action="store_true",
        help="open and close the connections inside the instrumented window (default: keep-alive, set up before)",
    )
    ap.add_argument("--settle", type=float, default=3.0, help="--setup-in-window: seconds after closing (%(default)s)")
    ap.add_argument("--out", type=Path, help="keep the callgrind files and proxy logs here (default: a temp folder)")
    ap.add_argument("--start-timeout", type=float, default=300.0, help="seconds for a proxy to listen (%(default)s)")
    ap.add_argument("--phase-timeout", type=float, default=900.0, help="seconds for each client phase (%(default)s)")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of the tables")
    ap.add_argument("--verbose", action="store_true", help="progress and the addon's argv on stderr")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in variants if v not in VARIANTS]:
        ap.error(f"--variants: unknown {', '.join(unknown)}")
    args.variant_list = list(dict.fromkeys(["bare", *variants]))  # bare always: every ratio is against it
    args.scenario_list = list(dict.fromkeys(args.scenario or SCENARIOS))
    if args.requests < 1 or args.connections < 1 or args.reps < 1:
        ap.error("--requests, --connections and --reps must be >= 1")
    if args.warmup < args.connections:
        ap.error("--warmup must be >= --connections (every connection's first request is set-up, not measured)")
    return args


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the children


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminated)
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"missing tool: {tool} (apt-get install valgrind)", file=sys.stderr)
            return 1
    if len(os.sched_getaffinity(0)) > 1:
        pb.pin(0, 1)  # this client and the origins on CPU 1, the proxies on CPU 0
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="proxy-callgrind-") as tmp_s, children() as procs:
        tmp = Path(tmp_s)
        if args.out is None:
            args.out = tmp / "out"
        args.out.mkdir(parents=True, exist_ok=True)
        make_ca(tmp / "confdir")  # proxy_bench.proxy_commands puts every proxy's --confdir here
        ports = start_origins(tmp, procs)
        for rep in range(1, args.reps + 1):
            for scenario in args.scenario_list:
                for variant in args.variant_list:
                    started = time.monotonic()
                    sample = measure(scenario, variant, rep, tmp, ports, args, procs)
                    samples.append(sample)
                    if args.verbose:
                        print(
                            f"{scenario} {variant} rep {rep}: {sample.per_request:,.0f} Ir/request "
                            f"(GC calls {sample.gc_calls}, full {sample.full_gcs}), window {sample.seconds:.1f} s, "
                            f"run {time.monotonic() - started:.0f} s",
                            file=sys.stderr,
                            flush=True,
                        )
    report(samples, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
