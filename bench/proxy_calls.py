"""Python calls per proxied request, by function, of bare mitmdump against a variant (where a script's cost goes).

Usage: ``.venv/bin/python bench/proxy_calls.py [--scenario https-allowed] [--variants bare,noop,addon]
[--requests 1000] [--warmup 300] [--connections 16] [--top 15]``

``bench/proxy_callgrind.py`` counts the instructions of a proxied request; its profile names CPython's C functions
(the bytecode loop, dict lookups), not the Python functions that ran them. This counts the latter: each variant's
mitmdump (``proxy_callgrind.variant_command``: bare, a no-op script, the addon as ``enforcer proxy`` starts it) runs
under a profile hook (``sys.setprofile`` in its main thread, where mitmproxy dispatches every hook) that counts every
Python function entry (a generator's every resumption included) and every C function call, switched on for the window
only; the client and origins are ``proxy_callgrind``'s (keep-alive requests after a warm-up, 127.0.0.1 only).
Counts, unlike times, do not depend on the machine's load: a fresh process given the same requests counts the same
calls, so the difference between two variants is exact. Printed: calls a request of each variant, then per variant the
functions whose count a request differs most from bare's.

The hook is switched by two real-time signals (mitmproxy keeps SIGUSR1 and SIGUSR2 for its own debug output). Every
wait is bounded, and the proxies and origins are stopped at the end, also on error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import proxy_bench as pb
from bench import proxy_callgrind as pc

ON, OFF = signal.SIGRTMIN + 3, signal.SIGRTMIN + 4
# Run in the proxy's interpreter before mitmdump's own entry point (argv[1]): the counter and its two switches.
BOOT = """
import collections, os, runpy, signal, sys
counts = collections.Counter()
def hook(frame, event, arg):
    if event == "call":
        c = frame.f_code
        counts[f"{c.co_filename}:{c.co_firstlineno}:{c.co_name}"] += 1
    elif event == "c_call":
        counts["C:" + getattr(arg, "__qualname__", repr(arg))] += 1
def on(*_):
    counts.clear()
    sys.setprofile(hook)
def off(*_):
    sys.setprofile(None)
    out = os.environ["PROXY_CALLS_OUT"]
    with open(out + ".tmp", "w", encoding="utf-8") as fh:
        for name, n in counts.items():
            fh.write(f"{n}\\t{name}\\n")
    os.replace(out + ".tmp", out)
signal.signal(__ON__, on)
signal.signal(__OFF__, off)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
""".replace("__ON__", str(int(ON))).replace("__OFF__", str(int(OFF)))


async def window(scenario: str, port: int, pid: int, ports: dict[str, int], args: argparse.Namespace) -> None:
    """Warm-up requests, then ``args.requests`` with the counter on; the same connections throughout."""
    t = args.phase_timeout
    conns = [await pc.bounded(pc.open_conn(scenario, port, ports), t, "connect") for _ in range(args.connections)]
    try:
        await pc.bounded(pc.send(conns, args.warmup), t, "warm-up")
        os.kill(pid, ON)
        await pc.bounded(pc.send(conns, args.requests), t, "measured requests")
        os.kill(pid, OFF)
    finally:
        await pc.close(conns)


def count(
    scenario: str,
    variant: str,
    tmp: Path,
    ports: dict[str, int],
    args: argparse.Namespace,
    procs: list[subprocess.Popen[bytes]],
) -> Counter[str]:
    """One fresh proxy of ``variant``, one counted window; calls by function for the whole window."""
    cmd, port = pc.variant_command(variant, tmp)
    out = tmp / f"calls.{scenario}.{variant}.txt"
    out.unlink(missing_ok=True)
    with (tmp / f"mitmdump.{variant}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", BOOT, *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONHASHSEED": "0", "PROXY_CALLS_OUT": str(out)},
        )
    procs.append(proc)
    try:
        pb.wait_port(port, proc, timeout=args.start_timeout)
        asyncio.run(window(scenario, port, proc.pid, ports, args))
        deadline = time.monotonic() + 60
        while not out.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{variant}: no counts written ({out})")
            time.sleep(0.1)
    finally:
        pb.stop_groups([proc])
        procs.remove(proc)
    calls: Counter[str] = Counter()
    for line in out.read_text(encoding="utf-8").splitlines():
        n, name = line.split("\t", 1)
        calls[name.replace(str(Path(pb.__file__).resolve().parent.parent) + "/", "")] += int(n)
    return calls


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--scenario", choices=pc.SCENARIOS, default="https-allowed")
    ap.add_argument("--variants", default="bare,noop,addon", help="comma-separated, bare first (%(default)s)")
    ap.add_argument("--requests", type=int, default=1000, help="requests in the counted window (%(default)s)")
    ap.add_argument("--warmup", type=int, default=300, help="requests before it, same connections (%(default)s)")
    ap.add_argument("--connections", type=int, default=16, help="keep-alive client connections (%(default)s)")
    ap.add_argument("--top", type=int, default=15, help="functions shown per variant (%(default)s)")
    ap.add_argument("--start-timeout", type=float, default=60.0, help="seconds for a proxy to listen (%(default)s)")
    ap.add_argument("--phase-timeout", type=float, default=120.0, help="seconds for each client phase (%(default)s)")
    args = ap.parse_args(argv)
    args.variant_list = args.variants.split(",")
    if args.variant_list[0] != "bare" or not set(args.variant_list) <= set(pc.VARIANTS):
        ap.error(f"--variants: bare first, then any of {', '.join(pc.VARIANTS[1:])}")
    return args


def run(args: argparse.Namespace) -> dict[str, Counter[str]]:
    """Each variant's calls by function over the window (``parse_args``' namespace), in ``args.variant_list`` order."""
    results: dict[str, Counter[str]] = {}
    with tempfile.TemporaryDirectory(prefix="proxy-calls-") as tmp_s, pc.children() as procs:
        tmp = Path(tmp_s)
        pc.make_ca(tmp / "confdir")
        ports = pc.start_origins(tmp, procs)
        for variant in args.variant_list:
            results[variant] = count(args.scenario, variant, tmp, ports, args, procs)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    n = args.requests
    bare = results["bare"]
    print(f"{args.scenario}, {n} keep-alive requests over {args.connections} connections after {args.warmup}")
    for variant, calls in results.items():
        total = sum(calls.values()) / n
        print(f"  {variant}: {total:,.1f} Python and C calls a request ({total / (sum(bare.values()) / n):.4f} x bare)")
    for variant, calls in results.items():
        if variant == "bare":
            continue
        diff = [(calls[k] - bare[k], k) for k in calls.keys() | bare.keys() if calls[k] != bare[k]]
        diff.sort(key=lambda d: (-abs(d[0]), d[1]))
        print(f"\n{variant} - bare, calls a request (the {args.top} largest differences):")
        for d, name in diff[: args.top]:
            print(f"  {d / n:+9.2f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
