"""Instructions per event (valgrind callgrind) of one ``enforcer report`` worker's pass over a byte range.

Usage: ``.venv/bin/python bench/report_callgrind.py --events FILE [--leases CSV] [--inventory CSV] [--start 0]
[--bytes 16M] [--warmup-bytes 64M] [--reps 1] [--out DIR] [--json]``

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
sys.path.insert(0, str(ROOT))
from bench.proxy_callgrind import CONTROL_TIMEOUT, control, dump_file, read_dump  # noqa: E402
from enforcer.config import parse_size  # noqa: E402

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


def measure(args: argparse.Namespace, out: Path) -> dict[str, float]:
    """One repetition: the instructions of the worker's pass over the range, and the lines and events it held."""
    dump = out / "callgrind.out"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={dump}",
        sys.executable,
        "-c",
        _CHILD,
        str(args.events),
        str(args.start),
        str(args.bytes),
        str(args.warmup_bytes),
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
            control(proc.pid, "-i", "on")
            proc.stdin.write("go\n")
            proc.stdin.flush()
            done = proc.stdout.readline().split()
            if not done or done[0] != "done":
                raise RuntimeError("the measured process stopped before the end of its pass")
            control(proc.pid, "-i", "off")
            control(proc.pid, "-d")
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            proc.wait(timeout=CONTROL_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
    ir = read_dump(dump_file(dump)).instructions
    lines, events = int(done[1]), int(done[2])
    return {"instructions": ir, "lines": lines, "events": events, "ir_per_event": ir / max(1, events)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=Path, required=True, help="one event file (bench/report_bench.py writes them)")
    ap.add_argument("--leases", type=Path)
    ap.add_argument("--inventory", type=Path)
    ap.add_argument("--start", type=int, default=0, help="byte offset of the measured range")
    ap.add_argument("--bytes", type=parse_size, default="16M", help="the measured range's length (suffix K, M, G)")
    ap.add_argument(
        "--warmup-bytes",
        type=lambda text: parse_size(text, minimum=0),
        default="64M",
        help="scanned before the range, uninstrumented",
    )
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, help="keep the callgrind files here (callgrind_annotate reads them)")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            sys.exit(f"report_callgrind: {tool} not found (Debian package valgrind)")
    args.start = max(args.start, args.warmup_bytes)
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
