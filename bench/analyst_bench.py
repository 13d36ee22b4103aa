"""Analyst benchmark: ingest rate, ``enforcer report`` time and peak RSS, ``/api/events`` first-page latency.

Usage: ``.venv/bin/python bench/analyst_bench.py [--events 1000000] [--workdir /tmp/enforcer-analyst-bench]``

- Generates N hit events with the real ``HitEvent.to_json`` (5,000 clients, IPv4 and IPv6, both apps, DNS and proxy,
  before and after the effective date) into ``WORKDIR/events.jsonl`` (reused when it already has N lines; never in
  the repository).
- Ingest: the real ``Ingester`` into a fresh SQLite store (wall rate, and CPU seconds of each pipeline stage).
  Peer, same run: the naive single-threaded loop (``json.loads`` + batched ``INSERT``, no pipeline, same schema),
  alternated with the real ingester for three rounds on a 200k-event prefix; the ratio is the median of the rounds.
- Report: ``python -m enforcer report --format json`` as a child process; wall time and the child's peak RSS
  (its VmHWM, sampled: ``run_child``). Peers, same run: ``wc -l`` on the file (the I/O floor) and a naive
  ``json.loads`` per line loop.
- API: a real ``enforcer analyst`` process on the filled store; median and p95 of the first page of ``/api/events``
  (no filter, ``app=``, ``client=``), against ``/healthz`` on the same server (the HTTP floor); the first dashboard
  view (``/api/dashboard`` unfiltered, cold: served from the per-hour and per-client rollups) and filtered views.
- Retention: an analyst with ``--retention 30d`` on the filled store deletes every (2023) event in bounded batches;
  the latency of ``/healthz``, the first page of events and the dashboard while it does (``--skip retention``).

- Restart: the analyst started again on the same store: the first view is the one kept by the previous run
  (state.py, ``<db>.first-view.json``) when nothing changed (``--skip restart``).
- ``--events-path FILE|DIR`` (e.g. ``bench/report_bench.py``'s 10M events split into 1M-line files, a file being
  at most ``--max-file-size``, 4 GiB) instead of generating, with ``--leases`` / ``--inventory`` for the report and
  the analyst.

Prints one JSON object with every figure and the targets (issue 13: ingest >= 50,000/s, report <= 30 s and <= 300 MB
at 10M events with 20,000 leases, first dashboard view <= 200 ms at 1M and <= 300 ms at 10M; first page <= 100 ms).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import math
import os
import random
import resource
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procfs import vm_hwm_kb  # noqa: E402
from enforcer.analyst.ingest import Ingester  # noqa: E402
from enforcer.analyst.lines import tune_gc  # noqa: E402
from enforcer.analyst.records import parse_line, ts_to_us  # noqa: E402
from enforcer.analyst.report import enforcement_of  # noqa: E402
from enforcer.analyst.store import INSERT, SCHEMA, Store  # noqa: E402
from enforcer.config import default_blocklist  # noqa: E402
from enforcer.events import HitEvent  # noqa: E402
from enforcer.policy import load_policy  # noqa: E402

TOKEN = "bench-token"


def generate(path: Path, n: int, clients: int, seed: int = 1) -> float:
    if path.exists():
        with path.open("rb") as fh:
            if sum(1 for _ in fh) == n:
                return 0.0
    policy = load_policy([ROOT / "blocklists"])
    rnd = random.Random(seed)
    names = ["long.weixin.qq.com", "www.wechat.com", "kaspersky.com", "dnl-01.geo.kaspersky.com", "dns.weixin.qq.com"]
    urls = ["http://dldir1.qq.com/weixin/android/weixin.apk", "https://kaspersky-labs.com/update/index.xml"]
    dns_matches = [(n_, policy.match_name(n_)) for n_ in names]
    url_matches = [(u, policy.match_url(u)) for u in urls]
    pool = [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(clients * 4 // 5)]
    pool += [f"2001:db8:{i // 65536:x}:{i % 65536:x}::1" for i in range(clients - len(pool))]
    # The banned apps' date (a kind: control file has none: enforced since 1970, which would put events before it).
    effective = min(policy.apps[a].effective for a in policy.ban_apps)
    start = effective - timedelta(days=10)
    step = 40 * 86400 / n
    t0 = time.perf_counter()
    with path.open("w", encoding="utf-8") as fh:
        buf = []
        for i in range(n):
            at = start + timedelta(seconds=i * step)
            client = pool[rnd.randrange(len(pool))]
            if rnd.random() < 0.7:
                name, m = dns_matches[rnd.randrange(len(dns_matches))]
                kw: dict[str, Any] = {"dns_question_name": name, "dns_question_type": "A"}
                comp, action = "dns", "dns-block"
            else:
                url, m = url_matches[rnd.randrange(len(url_matches))]
                kw = {"url_full": url, "url_domain": url.split("/")[2], "http_method": "GET"}
                comp, action = "proxy", "http-block"
            assert m is not None
            ev = HitEvent.from_match(
                m,
                action=action,
                component=comp,
                version=policy.fingerprint,
                enforced=m.enforced(at),
                at=at,
                source_ip=client,
                source_port=40000 + i % 20000,
                **kw,
            )
            buf.append(ev.to_json())
            if len(buf) >= 10000:
                fh.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            fh.write("\n".join(buf) + "\n")
    return time.perf_counter() - t0


def fresh_db(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _io_counters() -> dict[str, int]:
    """This process's I/O counters (``/proc/self/io``: ``wchar``, ``write_bytes``, ...)."""
    with open("/proc/self/io") as fh:
        return {k: int(v) for k, v in (line.split(": ") for line in fh)}


def bench_ingest(events: Path, db: Path, budget: float | None = None, sample_s: float = 0.0) -> dict[str, Any]:
    """The real ``Ingester`` into a fresh store: wall rate and CPU of each stage. ``budget``: stop cleanly after this
    many seconds (after the chunk in hand); ``sample_s``: the stored count every so often (the rate as the store
    grows), also printed to stderr as it goes."""
    fresh_db(db)
    tune_gc()  # as the analyst process sets its collector (cli.run_analyst)
    store = Store(db)
    # As the analyst runs it: the rollups follow the shipped policy, updated in each chunk's transaction.
    enforcement = enforcement_of(load_policy([default_blocklist()]))
    ing = Ingester(store, [events], enforcement=lambda: enforcement)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    io0 = _io_counters()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    done = threading.Event()
    samples: list[tuple[float, int, float]] = []

    def watch() -> None:
        last_t, last_n = 0.0, 0
        while not done.wait(sample_s or 1.0):
            t = time.perf_counter() - t0
            if budget is not None and t >= budget:
                ing._stop.set()  # ends the poll after the chunk in hand
            if sample_s:
                n = store.count()
                samples.append((round(t, 1), n, round((n - last_n) / (t - last_t))))
                print(f"ingest: {t:7.1f} s {n:>10,} stored {samples[-1][2]:>7,}/s", file=sys.stderr, flush=True)
                last_t, last_n = t, n

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    n = 0
    while True:  # several polls: a budget stop ends one early, and a folder's files all come in the first
        got = ing.poll_once()
        n += got
        if not got or ing._stop.is_set():
            break
    dt = time.perf_counter() - t0
    done.set()
    watcher.join()
    cpu_main = time.process_time() - cpu0
    io1 = _io_counters()
    ing.stop()  # reaps the parser process, so its CPU time shows in RUSAGE_CHILDREN
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_parser = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    store.close()
    return {
        "events": n,
        "seconds": round(dt, 2),
        "events_per_s": round(n / dt),
        "budget_reached": budget is not None and dt >= budget,
        "cpu_seconds_writer": round(cpu_main, 2),
        "cpu_seconds_parser": round(cpu_parser, 2),
        "cpu_us_per_event_writer": round(cpu_main / max(n, 1) * 1e6, 1),
        "cpu_us_per_event_parser": round(cpu_parser / max(n, 1) * 1e6, 1),
        # The rate the slower of the two pipeline stages allows with a core to itself (the machine is shared).
        "events_per_cpu_s_bottleneck": round(n / max(cpu_main, cpu_parser)),
        "writer_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        # What the store costs the disk: bytes the writer passed to write() (the WAL's frames and the checkpoints'
        # copies) and bytes it sent to the block device (its page-cache writeback), per event.
        "bytes_written_per_event": round((io1["wchar"] - io0["wchar"]) / max(n, 1)),
        "bytes_to_disk_per_event": round((io1["write_bytes"] - io0["write_bytes"]) / max(n, 1)),
        "samples_s_stored_rate": samples,
    }


def bench_naive_ingest(events: Path, db: Path, limit: int) -> dict[str, float]:
    """The straightforward loop, same schema: parse every line, then insert in batches, one thread."""
    fresh_db(db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    t0 = time.perf_counter()
    n = 0
    with events.open(encoding="utf-8") as fh:
        batch = []
        for line in fh:
            parsed = parse_line(line)
            if parsed is None:
                continue
            r, _ = parsed
            batch.append(
                (r.id, ts_to_us(r.ts), r.app, r.client, r.category, r.component, r.action, r.rule, int(r.denied),
                 r.name, line.rstrip("\n"), "", "", "")
            )  # fmt: skip
            n += 1
            if len(batch) == 5000:
                conn.execute("BEGIN")
                conn.executemany(INSERT, batch)
                conn.execute("COMMIT")
                batch.clear()
            if n >= limit:
                break
        if batch:
            conn.execute("BEGIN")
            conn.executemany(INSERT, batch)
            conn.execute("COMMIT")
    dt = time.perf_counter() - t0
    conn.close()
    fresh_db(db)
    return {"events": n, "seconds": round(dt, 2), "events_per_s": round(n / dt)}


def _tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` plus all its descendants (report workers), walking /proc/PID/task/*/children only."""
    page = os.sysconf("SC_PAGE_SIZE")
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * page
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children", "rb") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total / 2**20


def run_child(cmd: list[str]) -> tuple[float, int, int, int]:
    """(wall seconds, peak RSS in MB of the child process, peak RSS of its whole process tree, return code).

    Both are sampled every 20 ms. The child's is its own high-water mark (VmHWM), which only grows, so a sample
    misses at most what it added in its last 20 ms; not wait4's ``ru_maxrss``, which also counts this process's
    memory (``procfs.vm_hwm_kb``). The tree figure (the sum over the child
    and its workers at each sample) can miss a short peak.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    peak_tree = peak = 0.0
    while True:
        pid, status, _rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, (vm_hwm_kb(proc.pid) or 0) / 1024)
        peak_tree = max(peak_tree, _tree_rss_mb(proc.pid))
        time.sleep(0.02)
    dt = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return dt, round(peak), round(peak_tree), proc.returncode


def bench_report(events: Path, *extra: str) -> dict[str, float]:
    report = [sys.executable, "-m", "enforcer", "report", "--events", str(events), "--format", "json", *extra]
    dt, rss, tree, rc = run_child(report)
    assert rc == 0, "enforcer report failed"
    dt1, rss1, _, rc1 = run_child([*report, "--workers", "1"])
    assert rc1 == 0, "enforcer report --workers 1 failed"
    wc, _, _, _ = run_child(["wc", "-l", str(events)])
    naive_code = (
        "import json,sys\nn=0\nfor line in open(sys.argv[1],encoding='utf-8'):\n json.loads(line); n+=1\nprint(n)"
    )
    naive, _, _, _ = run_child([sys.executable, "-c", naive_code, str(events)])
    return {
        "seconds": round(dt, 2),
        "peak_rss_mb_per_process": rss,
        "peak_rss_mb_process_tree": tree,
        "one_worker_seconds": round(dt1, 2),
        "one_worker_peak_rss_mb": rss1,
        "peer_wc_l_seconds": round(wc, 2),
        "peer_json_loads_loop_seconds": round(naive, 2),
        "ratio_vs_json_loads_loop": round(dt / naive, 2),
        "one_worker_ratio_vs_json_loads_loop": round(dt1 / naive, 2),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _latencies(url: str, n: int, auth: bool = True) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {TOKEN}"} if auth else {}
    out = []
    for _ in range(n):
        req = urllib.request.Request(url, headers=headers)
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=600) as resp:
            resp.read()
        out.append((time.perf_counter() - t0) * 1000)
    out.sort()
    p95 = out[min(len(out) - 1, math.ceil(len(out) * 0.95) - 1)]
    return {"median_ms": round(statistics.median(out), 1), "p95_ms": round(p95, 1)}


# The longest wait for the analyst's refresh loop to prepare the first view (a 10M-event store's first pass took
# 73-155 s on the test machines, docs/scale.md).
FIRST_VIEW_WAIT_S = 900


def _die_with_parent() -> None:
    """In the analyst child: SIGTERM when the bench dies (a test timeout kills the bench with SIGKILL, and its
    analyst must not outlive it)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _start_analyst(events: Path, db: Path, workdir: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    token = workdir / "token"
    token.write_text(TOKEN, encoding="utf-8")
    port = _free_port()
    # Each analyst's log in the workdir (analyst-1.log, ...): what a run that fails or hangs is asked about first.
    log_path = workdir / f"analyst-{len(list(workdir.glob('analyst-*.log'))) + 1}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "enforcer", "analyst", "--listen", f"127.0.0.1:{port}", "--events", str(events),
             "--db", str(db), "--token-file", str(token), *extra],
            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as resp:
                resp.read()
            return proc, base
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.2)


def bench_retention(events: Path, db: Path, workdir: Path) -> dict[str, object]:
    """A big delete: an analyst with --retention 30d on the filled store (every bench event is from 2023, so all
    of them go), and the API latency while it deletes (/healthz, the first page of events, the dashboard)."""
    proc, base = _start_analyst(events, db, workdir, "--retention", "30d")
    try:
        t0 = time.perf_counter()
        lat: dict[str, list[float]] = {"healthz": [], "events_first_page": [], "dashboard": []}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        urls = {"healthz": "/healthz", "events_first_page": "/api/events?limit=100", "dashboard": "/api/dashboard"}
        left = 1
        while left and time.perf_counter() - t0 < 600:
            for name, path in urls.items():
                t1 = time.perf_counter()
                with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers), timeout=60) as r:
                    body = r.read()
                lat[name].append((time.perf_counter() - t1) * 1000)
                if name == "dashboard":
                    left = json.loads(body)["totals"]["attempts"]
            time.sleep(0.1)
        out: dict[str, object] = {"all_deleted_seconds": round(time.perf_counter() - t0, 1), "deleted_all": left == 0}
        for name, values in lat.items():
            values.sort()
            out[name] = {
                "n": len(values),
                "median_ms": round(statistics.median(values), 1),
                "p95_ms": round(values[min(len(values) - 1, math.ceil(len(values) * 0.95) - 1)], 1),
                "max_ms": round(values[-1], 1),
            }
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def bench_api(
    events: Path, db: Path, workdir: Path, *extra: str, filtered: bool = True, pages: bool = True
) -> dict[str, object]:
    # A view kept by an earlier run would be served at start: this part measures the start without one.
    Path(str(db) + ".first-view.json").unlink(missing_ok=True)
    proc, base = _start_analyst(events, db, workdir, *extra)
    try:
        t0 = time.perf_counter()
        # At start nothing is prepared yet: this request computes the whole view itself (what the first visitor of
        # a just-started analyst waits for).
        at_start = _latencies(base + "/api/dashboard", 1)
        while not json.loads(urllib.request.urlopen(base + "/healthz", timeout=60).read())["first_view_prepared"]:
            if time.perf_counter() - t0 > FIRST_VIEW_WAIT_S:
                raise RuntimeError(
                    f"the first view was not prepared in {FIRST_VIEW_WAIT_S} s (see {workdir}/analyst-*.log)"
                )
            time.sleep(0.5)
        prepared_after = time.perf_counter() - t0
        out: dict[str, object] = {
            # Cold: the first request computes the aggregations (the unfiltered first view: from the rollups and
            # the per-device tallies); then as prepared by the refresh loop. The report shares the dashboard's
            # (client, app) aggregation.
            "dashboard_first_view_at_start": at_start,
            "first_view_prepared_after_start_seconds": round(prepared_after, 1),
            "dashboard_first_view": _latencies(base + "/api/dashboard", 5),
            # Filtered by app: the memoised unfiltered tallies narrowed (identity.tallies_of_apps), the rollups.
            "dashboard_app_filter": _latencies(base + "/api/dashboard?app=wechat", 5),
        }
        if pages:  # --skip pages: the event pages, the page shell and the cases (a first pass over every event)
            some_client = json.loads(urllib.request.urlopen(
                urllib.request.Request(base + "/api/events?limit=1", headers={"Authorization": f"Bearer {TOKEN}"}),
                timeout=30).read())["events"][0]["source"]["ip"]  # fmt: skip
            out["first_page"] = _latencies(base + "/api/events?limit=100", 50)
            out["first_page_app_filter"] = _latencies(base + "/api/events?limit=100&app=kaspersky", 50)
            out["first_page_client_filter"] = _latencies(base + f"/api/events?limit=100&client={some_client}", 50)
            out["peer_healthz"] = _latencies(base + "/healthz", 50, auth=False)
            out["page_shell"] = _latencies(base + "/", 5)
            out["dashboard_warm"] = _latencies(base + "/api/dashboard", 5)
            out["cases_first"] = _latencies(base + "/api/cases", 1)
        if filtered:  # each a pass over the events of the filter (minutes at 10M): --skip filtered
            # A category that report_bench's events never have: the first page reads the whole table.
            out["first_page_category_filter"] = _latencies(base + "/api/events?limit=100&category=download", 20)
            out["report_api_after_dashboard"] = _latencies(base + "/api/report", 3)
            out["dashboard_cold_app_filter"] = _latencies(base + "/api/dashboard?app=kaspersky", 1)
            # A time filter is not answered by the rollups: the events table (the same view, last 30 days of data).
            out["dashboard_cold_since_filter"] = _latencies(base + "/api/dashboard?since=2023-11-01", 1)
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def bench_restart(events: Path, db: Path, workdir: Path, *extra: str) -> dict[str, object]:
    """The first view right after a restart on the same store (the view kept by the previous run is served when
    nothing changed), and the time until /healthz answers."""
    t0 = time.perf_counter()
    proc, base = _start_analyst(events, db, workdir, *extra)
    try:
        ready = time.perf_counter() - t0
        first = _latencies(base + "/api/dashboard", 1)
        health = json.loads(urllib.request.urlopen(base + "/healthz", timeout=60).read())
        return {
            "healthz_after_start_seconds": round(ready, 2),
            "dashboard_first_view_after_restart": first,
            "first_view_prepared_at_start": health["first_view_prepared"],
            "dashboard_first_view_after_restart_next5": _latencies(base + "/api/dashboard", 5),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=5000)
    ap.add_argument("--workdir", default="/tmp/enforcer-analyst-bench")
    ap.add_argument("--naive-limit", type=int, default=200_000, help="events per alternating ingest round vs the peer")
    ap.add_argument("--skip", action="append", default=[],
                    choices=["report", "rounds", "retention", "ingest", "api", "restart", "filtered", "pages"],
                    help="leave out a part (repeatable)")  # fmt: skip
    ap.add_argument("--events-path", type=Path, default=None,
                    help="an existing event file or folder (e.g. bench/report_bench.py's 10M events split in a "
                         "folder) instead of generating one (default: generate WORKDIR/events-N.jsonl)")  # fmt: skip
    ap.add_argument("--leases", type=Path, default=None, help="a lease file for the report and the analyst")
    ap.add_argument("--inventory", type=Path, default=None, help="an inventory for the report and the analyst")
    ap.add_argument(
        "--ingest-budget",
        type=float,
        default=None,
        help="stop the ingest part cleanly after this many seconds (default: none, ingest everything)",
    )
    ap.add_argument(
        "--sample",
        type=float,
        default=0.0,
        help="print the stored count every so many seconds of the ingest part (default: 0, never)",
    )
    ap.add_argument(
        "--watchdog",
        type=float,
        default=0.0,
        help="after this many seconds, print every thread's stack to stderr and exit 1 (a hung run says where it "
        "hangs; the analyst processes' logs are analyst-N.log in the workdir; default: 0, none)",
    )
    args = ap.parse_args()
    if args.watchdog:
        faulthandler.dump_traceback_later(args.watchdog, exit=True)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "analyst.sqlite"
    if args.events_path is not None:
        events, gen = args.events_path, 0.0
        files = sorted(events.glob("*.jsonl")) if events.is_dir() else [events]
    else:
        events = workdir / f"events-{args.events}.jsonl"
        gen = generate(events, args.events, args.clients)
        files = [events]
    extra: list[str] = []
    if args.leases is not None:
        extra += ["--leases", str(args.leases)]
    if args.inventory is not None:
        extra += ["--inventory", str(args.inventory)]
    result: dict[str, object] = {
        "events": args.events,
        "file_mb": round(sum(f.stat().st_size for f in files) / 2**20, 1),
        "generated_seconds": round(gen, 1),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg()[0],
    }
    if "report" not in args.skip:
        result["report"] = bench_report(events, *extra)
    if "ingest" not in args.skip:  # --skip ingest: the API parts on the store of the previous run
        result["ingest"] = bench_ingest(events, db, args.ingest_budget, args.sample)
    # The ratio against the naive loop comes from alternating rounds on the same prefix (fresh stores each time),
    # so that both see the same load on this shared machine.
    rounds = min(args.naive_limit or 200_000, args.events)
    prefix = workdir / f"events-prefix-{rounds}.jsonl"
    if "rounds" not in args.skip and (not prefix.exists() or prefix.stat().st_size == 0):
        with files[0].open("rb") as src, prefix.open("wb") as dst:
            for _, line in zip(range(rounds), src, strict=False):
                dst.write(line)
    ours, naive = [], []
    for _ in range(0 if "rounds" in args.skip else 3):
        naive.append(bench_naive_ingest(prefix, workdir / "naive.sqlite", rounds)["events_per_s"])
        ours.append(bench_ingest(prefix, workdir / "rounds.sqlite")["events_per_s"])
    fresh_db(workdir / "rounds.sqlite")
    result["ingest_rounds"] = {
        "events_per_round": rounds,
        "ours_events_per_s": ours,
        "naive_loop_events_per_s": naive,
        "ratio_median": round(statistics.median(o / n for o, n in zip(ours, naive, strict=True)), 2) if ours else None,
    }
    result["db_mb"] = round(db.stat().st_size / 2**20, 1) if db.exists() else None
    if "api" not in args.skip:
        result["api"] = bench_api(
            events, db, workdir, *extra, filtered="filtered" not in args.skip, pages="pages" not in args.skip
        )
    if "restart" not in args.skip:
        result["restart"] = bench_restart(events, db, workdir, *extra)
    if "retention" not in args.skip:
        result["retention"] = bench_retention(events, db, workdir)
    result["loadavg_after"] = os.getloadavg()[0]
    result["targets"] = {
        "ingest_events_per_s": ">= 50000 (10M events, 20,000 leases)",
        "report_seconds": "<= 30 at 10M events with 20,000 leases",
        "report_peak_rss_mb": "<= 300 at 10M events with 20,000 leases",
        "first_page_ms": "<= 100",
        "dashboard_first_view_ms": "<= 200 at 1M events, <= 300 at 10M",
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
