"""The resolver chain's hot path in-process: CPU time per blocked and per cached query through ``handle``.

    .venv/bin/python bench/dns_chain_bench.py [--queries 200000] [--rounds 5]
    .venv/bin/python bench/dns_chain_bench.py --once blocked --queries 4000 --events /tmp/ev.jsonl   # for callgrind

No sockets and no event loop: the shipped blocklists, the real sinkhole, cache and observer (no event file), one
client. Blocked: A queries for names of the shipped lists; cached: A queries for 1,000 allowed names whose answers
were stored in the cache first. Prints the best (least disturbed) of ``--rounds`` rounds in ns per query, as JSON.
To compare two trees on one machine, run it with each tree first on ``sys.path`` in alternation, e.g.
``cd /tmp/base-worktree && python /path/to/bench/dns_chain_bench.py`` (it imports ``enforcer`` from the current
directory). Complements bench/dns_bench.sh (dnsperf over real sockets), whose figures move with the machine's load.

``--once KIND`` runs ``--queries`` queries of one kind once, with hit events written to ``--events`` and flushed (all
at the end, in full batches of 1,000: deterministic), and prints nothing: run it under ``valgrind --tool=callgrind``
for N and for 0 queries and divide the difference of the "Collected" totals by N for instructions per query
(bench/dns_callgrind.sh does exactly that).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.getcwd())

import dnslib

from enforcer.dns import DEFAULT_ALLOW, chain
from enforcer.dns.cache import Cache, cache_key
from enforcer.dns.observe import Observer
from enforcer.dns.sinkhole import Sinkhole, parse_mode
from enforcer.dns.upstream import Forwarder, parse_upstream
from enforcer.dns.wire import parse_query
from enforcer.policy import load_policy

BLOCKED = ["weixin.qq.com", "long.weixin.qq.com", "kaspersky.com", "dlm.kaspersky-labs.com", "wx.qq.com"]


class Holder:
    def __init__(self, policy: Any) -> None:
        self.policy = policy


def make_chain(blocklists: Path, writer: Any = None) -> tuple[Any, Cache]:
    policy = load_policy([blocklists])
    cache = Cache(100_000)
    if hasattr(chain, "Acl"):  # a tree from before enforcer/net.py
        acl: Any = chain.Acl(DEFAULT_ALLOW)
    else:
        from enforcer.net import NetworkSet

        acl = NetworkSet(DEFAULT_ALLOW)
    parts = chain.ChainParts(
        Holder(policy), acl, Sinkhole(parse_mode("null")), cache, Forwarder([parse_upstream("127.0.0.1:9")]),
        Observer(None, writer),
    )  # fmt: skip
    return chain.build_chain(parts), cache


def queries(names: list[str]) -> list[bytes]:
    return [bytes(dnslib.DNSRecord(dnslib.DNSHeader(id=i, rd=1), q=dnslib.DNSQuestion(n, 1)).pack())
            for i, n in enumerate(names)]  # fmt: skip


def per_query(handle: Any, packets: list[bytes], total: int) -> float:
    addr = ("127.0.0.1", 40000)
    n = len(packets)
    t0 = time.process_time_ns()
    for i in range(total):
        handle(packets[i % n], addr, False)
    return (time.process_time_ns() - t0) / max(total, 1)  # total 0: the --once baseline run for callgrind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--blocklists", default=str(Path.cwd() / "blocklists"))
    ap.add_argument("--once", choices=("blocked", "cached"), help="one pass of --queries queries, for callgrind")
    ap.add_argument("--events", help="hit events to this file (default: none)")
    args = ap.parse_args()
    writer = None
    if args.events:
        from enforcer.events import EventWriter

        # --once: the writer thread waits for the final flush and writes everything then, in full batches, so its
        # share of the count does not depend on how fast valgrind runs (with the default wake-ups every 100 ms the
        # batches, and so the per-batch costs per event, followed the machine's load).
        writer = (
            EventWriter(args.events, max_queue=args.queries + 20_000, flush_interval=3600.0)
            if args.once
            else EventWriter(args.events)
        )
    handle, cache = make_chain(Path(args.blocklists), writer)
    blocked = queries(BLOCKED)
    allowed_names = [f"host{i}.example.org" for i in range(1000)]
    cached = queries(allowed_names)
    for data in cached:
        reply = dnslib.DNSRecord.parse(data).reply()
        reply.add_answer(dnslib.RR(reply.q.qname, 1, ttl=3600, rdata=dnslib.A("192.0.2.1")))
        q = parse_query(data)
        assert q is not None
        cache.store(cache_key(q, data), bytes(reply.pack()))
    for data in blocked + cached:  # warm memos and templates; every query must be answered synchronously
        assert type(handle(data, ("127.0.0.1", 40000), False)) is bytes
    # The collector as `enforcer dns` sets it (enforcer/dns/process.py): the policy frozen out of its sight. Otherwise
    # a full collection over the policy lands in one measured loop and not in another (callgrind read 18.0k and 22.5k
    # instructions per cached query for two trees whose cached path is the same).
    gc.collect()
    gc.set_threshold(50_000, 20, 100)
    gc.freeze()
    if args.once:
        if writer is not None:
            writer.flush()
        per_query(handle, blocked if args.once == "blocked" else cached, args.queries)
        if writer is not None:
            writer.close()
        return
    best = {"blocked": float("inf"), "cached": float("inf")}
    for _ in range(args.rounds):
        best["blocked"] = min(best["blocked"], per_query(handle, blocked, args.queries))
        best["cached"] = min(best["cached"], per_query(handle, cached, args.queries))
    print(json.dumps({"tree": os.getcwd(), "ns_per_query": {k: round(v) for k, v in best.items()}}))


if __name__ == "__main__":
    main()
