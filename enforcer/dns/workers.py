"""``enforcer dns --workers N``: N resolver processes sharing the listen addresses, one /metrics for all.

Python answers on one core per process; SO_REUSEPORT lets N processes bind the same UDP and TCP addresses and the
kernel spreads clients over them (by source address and port). Each worker is a whole resolver (its own policy load,
cache, reload watcher and event file ``PATH`` -> ``PATH-wK``), started with the ``spawn`` method so that no lock or
thread of the parent is inherited. The parent:

- waits until every worker listens, then prints the usual start-up lines;
- serves ``--metrics`` itself: at each scrape it reads every worker's own /metrics (on 127.0.0.1, an ephemeral port)
  and adds them up (counters, histograms and most gauges are sums; the policy's info, rule counts, reload time and
  upstream health are the maximum), plus ``enforcer_dns_workers``;
- forwards SIGHUP (reload) to the workers, stops them on SIGTERM/SIGINT, and restarts a worker that dies (at most
  ``MAX_RESTARTS`` in ``RESTART_WINDOW`` seconds, then it stops everything and exits 1).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ..metrics import (
    DNS_UPSTREAM_HEALTHY,
    DNS_WORKERS,
    POLICY_INFO,
    POLICY_LAST_RELOAD,
    POLICY_RULES,
    SPECS,
    serve_metrics,
)

log = logging.getLogger("enforcer.dns")
MAX_GAUGES = {POLICY_INFO, POLICY_LAST_RELOAD, POLICY_RULES, DNS_UPSTREAM_HEALTHY}
START_TIMEOUT = 60.0
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


def worker_events_path(path: str | None, index: int) -> str | None:
    """``var/events/dns.jsonl`` -> ``var/events/dns-w1.jsonl``: one writer per file (rotation is per writer)."""
    if not path:
        return None
    p = Path(path)
    return str(p.with_name(f"{p.stem}-w{index}{p.suffix}"))


def _worker(settings: Any, index: int, conn: multiprocessing.connection.Connection) -> None:
    from .process import run_single

    # The parent handles Ctrl-C for the group and stops the workers with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = dataclasses.replace(
        settings,
        reuse_port=True,
        metrics="127.0.0.1:0",
        events=worker_events_path(settings.events, index),
        query_log=worker_events_path(settings.query_log, index),  # one writer per file, like the events
        feeds_refresh=settings.feeds_refresh and index == 1,  # one updater, not one per worker
    )

    def started(resolver: Any) -> None:
        conn.send(("ready", resolver.metrics_port, [li.display for li in resolver.listeners]))

    code = run_single(settings, started=started, quiet=True)
    sys.exit(code)


class _Worker:
    def __init__(self, ctx: Any, settings: Any, index: int) -> None:
        self.index = index
        self.parent_conn, child_conn = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_worker, args=(settings, index, child_conn), name=f"enforcer-dns-w{index}")
        self.process.start()
        child_conn.close()
        self.metrics_port: int | None = None
        self.addresses: list[str] = []

    def wait_ready(self, timeout: float) -> bool:
        if not self.parent_conn.poll(timeout):
            return False
        try:
            _, self.metrics_port, self.addresses = self.parent_conn.recv()
        except EOFError:  # died before it listened (its own error line says why)
            return False
        return True


class WorkerMetrics(Collector):
    """Adds up the workers' /metrics at scrape time."""

    def __init__(self, workers: list[_Worker]) -> None:
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        live = 0
        for w in list(self.workers):
            if w.metrics_port is None or not w.process.is_alive():
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{w.metrics_port}/metrics", timeout=2) as resp:
                    text = resp.read().decode()
            except OSError:
                continue
            live += 1
            for family in text_string_to_metric_families(text):
                if family.name not in merged:
                    merged[family.name] = Metric(family.name, family.documentation, family.type)
                    values[family.name] = {}
                take_max = family.type == "gauge" and family.name in MAX_GAUGES
                bucket = values[family.name]
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    old = bucket.get(key)
                    bucket[key] = (
                        sample.value if old is None else (max(old, sample.value) if take_max else old + sample.value)
                    )
        for name, metric in merged.items():
            for (sample_name, labels), value in values[name].items():
                metric.add_sample(sample_name, dict(labels), value)
            yield metric
        gauge = GaugeMetricFamily(DNS_WORKERS, SPECS[DNS_WORKERS].help)
        gauge.add_metric([], live)
        yield gauge


def run_workers(settings: Any, count: int) -> int:
    ctx = multiprocessing.get_context("spawn")
    workers = [_Worker(ctx, settings, i + 1) for i in range(count)]
    deadline = time.monotonic() + START_TIMEOUT
    for w in workers:
        if not w.wait_ready(max(0.1, deadline - time.monotonic())):
            print(f"enforcer dns: worker {w.index} did not start", file=sys.stderr)
            _stop(workers)
            return 1

    registry = CollectorRegistry()
    registry.register(WorkerMetrics(workers))
    server = serve_metrics(settings.metrics, registry) if settings.metrics else None
    for addr in workers[0].addresses:
        print(f"enforcer dns: listening on {addr} (udp+tcp, {count} workers)", flush=True)

    stopping = threading.Event()

    def on_stop(signum: int, frame: Any) -> None:
        stopping.set()

    def on_hup(signum: int, frame: Any) -> None:  # SIGHUP (reload) and SIGUSR1 (reopen the event files)
        for w in workers:
            if w.process.pid is not None and w.process.is_alive():
                os.kill(w.process.pid, signum)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGUSR1, on_hup)
    restarts: list[float] = []
    status = 0
    while not stopping.wait(0.5):
        for i, w in enumerate(workers):
            if w.process.is_alive():
                continue
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < RESTART_WINDOW]
            if len(restarts) >= MAX_RESTARTS:
                print(f"enforcer dns: workers keep dying ({MAX_RESTARTS} restarts in {RESTART_WINDOW:.0f} s); "
                      "stopping", file=sys.stderr)  # fmt: skip
                stopping.set()
                status = 1
                break
            restarts.append(now)
            log.error("worker %d exited with status %s; restarting it", w.index, w.process.exitcode)
            fresh = _Worker(ctx, settings, w.index)
            fresh.wait_ready(START_TIMEOUT)
            workers[i] = fresh
    _stop(workers)
    if server is not None:
        server[0].shutdown()
        server[0].server_close()
    logging.getLogger("enforcer.dns").info("stopped")
    return status


def _stop(workers: list[_Worker]) -> None:
    for w in workers:
        if w.process.is_alive():
            w.process.terminate()  # SIGTERM: the worker flushes its events and exits 0
    for w in workers:
        w.process.join(15)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(5)
