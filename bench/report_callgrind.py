"""Instructions per event (valgrind callgrind) of one ``enforcer report`` worker's pass over a byte range.

Usage: ``.venv/bin/python bench/report_callgrind.py --events FILE [--leases CSV] [--inventory CSV] [--start 0]
[--bytes 16M] [--warmup-bytes 4M] [--reps 1] [--json]``

Wall-clock figures of ``enforcer report`` move by a third and more with the machine's speed (docs/scale.md); the
instructions a worker executes for the same lines do not, so a change of a few percent in the worker's loop shows in
one run. The worker is ``report._worker_scan`` exactly as a report's pool runs it (``report._worker_init`` with the
same Selection ``enforcer report`` builds: the shipped blocklists, ``--inventory``, ``--leases``), on one range of
``--events`` (``bench/report_bench.py`` writes such files).

How, per repetition (a fresh process each time):

1. ``valgrind --tool=callgrind --instr-atstart=no`` runs a Python process (``PYTHONHASHSEED=0``) that loads the
   policy, inventory and leases, starts the worker's state and scans ``--warmup-bytes`` before ``--start`` (the
   identifier's caches, as a worker has them after its first task); uninstrumented, none of that is counted.
2. ``callgrind_control -i on``; the process scans ``[start, start + bytes)`` (``_worker_scan``: reading, decoding,
   matching, counting, settling and writing the range's fingerprints); ``callgrind_control -i off`` and ``-d``.
3. The dump's ``totals:`` line divided by the events the range held is the figure (Ir an event).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTROL_TIMEOUT = 120.0

# The measured process: its stdin says when to start and stop, its stdout when it is ready and done.
_CHILD = r"""
import sys, tempfile
from enforcer.analyst import report as R
from enforcer.analyst.identity import Identifier
from enforcer.analyst.inventory import Inventory
from enforcer.analyst.leases import load as load_leases
from enforcer.policy import load_policy

path, start, size, warm, leases, inventory, blocklists = sys.argv[1:8]
start, size, warm = int(start), int(size), int(warm)
policy = load_policy([blocklists])
identifier = Identifier(Inventory.load(inventory or None), load_leases([leases] if leases else []).book)
R._worker_init(R.Selection(R.enforcement_of(policy), None, None, frozenset(), identifier))
keys = tempfile.mkdtemp(prefix="report-callgrind-")
if warm:
    R._worker_scan([(path, max(0, start - warm), start)], R.DEFAULT_MAX_FILE_BYTES, keys)
print("ready", flush=True)
sys.stdin.readline()
_tallies, stats = R._worker_scan([(path, start, start + size)], R.DEFAULT_MAX_FILE_BYTES, keys)
print("done", sum(s.lines for s in stats), sum(s.events for s in stats), flush=True)
sys.stdin.readline()
"""


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    t = text.strip().lower()
    return int(float(t[:-1]) * units[t[-1]]) if t[-1:] in units else int(t)


def _control(*command: str, pid: int) -> None:
    done = subprocess.run(
        ["callgrind_control", *command, str(pid)], capture_output=True, text=True, timeout=CONTROL_TIMEOUT
    )
    if done.returncode != 0:
        raise RuntimeError(f"callgrind_control {' '.join(command)} {pid}: {done.stdout}{done.stderr}")


def _totals(path: Path) -> int:
    summary = None
    for line in path.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
        if line.startswith("summary:"):
            summary = int(line.split()[1])
    if summary is None:
        raise RuntimeError(f"{path}: no totals: or summary: line")
    return summary


def measure(args: argparse.Namespace, out: Path) -> dict[str, float]:
    """One repetition: the instructions of the worker's pass over the range, and the lines and events it held."""
    prefix = out / "callgrind.out"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={prefix}.%p",
        sys.executable,
        "-c",
        _CHILD,
        str(args.events),
        str(args.start),
        str(_size(args.bytes)),
        str(_size(args.warmup_bytes)),
        str(args.leases or ""),
        str(args.inventory or ""),
        str(ROOT / "blocklists"),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("the measured process did not start (run it without valgrind to see why)")
            _control("-i", "on", pid=proc.pid)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            done = proc.stdout.readline().split()
            if not done or done[0] != "done":
                raise RuntimeError("the measured process stopped before the end of its pass")
            _control("-i", "off", pid=proc.pid)
            _control("-d", pid=proc.pid)
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            proc.wait(timeout=CONTROL_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
    dumps = sorted(out.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
    dumped = [p for p in dumps if p.name.count(".") >= 3]  # callgrind.out.PID.N: the -d dump
    ir = _totals((dumped or dumps)[-1])
    lines, events = int(done[1]), int(done[2])
    return {"instructions": ir, "lines": lines, "events": events, "ir_per_event": ir / max(1, events)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=Path, required=True, help="one event file (bench/report_bench.py writes them)")
    ap.add_argument("--leases", type=Path)
    ap.add_argument("--inventory", type=Path)
    ap.add_argument("--start", type=int, default=0, help="byte offset of the measured range")
    ap.add_argument("--bytes", default="16M", help="the measured range's length (suffix k, M, G)")
    ap.add_argument("--warmup-bytes", default="4M", help="scanned before the range, uninstrumented")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, help="keep the callgrind files here (callgrind_annotate reads them)")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"report_callgrind: {tool} not found (Debian package valgrind)")
    if args.start < _size(args.warmup_bytes):
        args.start = _size(args.warmup_bytes)
    results = []
    for _ in range(args.reps):
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            results.append(measure(args, Path(tempfile.mkdtemp(prefix="rep-", dir=args.out))))
            continue
        with tempfile.TemporaryDirectory(prefix="report-callgrind-") as tmp:
            results.append(measure(args, Path(tmp)))
    if args.json:
        print(json.dumps(results))
        return
    for r in results:
        print(
            f"{r['instructions']:,} instructions, {r['events']:,} events ({r['lines']:,} lines): "
            f"{r['ir_per_event']:,.0f} Ir an event"
        )


if __name__ == "__main__":
    main()
