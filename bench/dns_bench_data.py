"""Helpers for bench/dns_bench.sh: build the benchmark blocklist and query files; summarise dnsperf output.

    python bench/dns_bench_data.py make OUTDIR --feed-names 100000   # blocklists/ + *.txt query files
    python bench/dns_bench_data.py summary dnsperf.out               # "qps avg_ms" from a dnsperf report
    python bench/dns_bench_data.py latency dnsperf-verbose.out       # "p50_ms p99_ms n" from dnsperf -v lines

The blocklist is the shipped policy plus an app whose include feed holds N synthetic names (the reference
measurements used a 100k-name list), so both servers carry a realistic table size.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make(out: Path, feed_names: int, miss_names: int, seed: int) -> None:
    from enforcer.policy import load_policy

    rng = random.Random(seed)
    lists = out / "blocklists"
    if lists.exists():
        shutil.rmtree(lists)
    lists.mkdir(parents=True)
    for f in (ROOT / "blocklists").glob("*.yaml"):
        shutil.copy(f, lists / f.name)
    feed = []
    if feed_names:
        (lists / "feeds").mkdir()
        feed = [f"f{i}-{rng.getrandbits(32):08x}.bench-feed.test" for i in range(feed_names)]
        (lists / "feeds" / "bench.txt").write_text("\n".join(feed) + "\n")
        (lists / "benchfeed.yaml").write_text(
            "app: benchfeed\nname: Benchmark feed\nvendor: bench\npolicy:\n  effective: 2020-01-01\n"
            "block:\n  - include: feeds/bench.txt\n    category: web\n"
        )
    policy = load_policy([lists])
    blocked_roots = [name for name, rule, _exact in policy.name_entries() if rule.action == "block"]
    # Blocked queries: names under shipped rules (with a random label when the rule is a domain) and feed names.
    blocked = []
    for i in range(20_000):
        if feed and i % 2:
            name = rng.choice(feed)
        else:
            name = rng.choice(blocked_roots)
            if rng.random() < 0.5:
                name = f"h{rng.randrange(1000)}.{name}"
        qtype = "AAAA" if i % 5 == 0 else "A"
        m = policy.match_name(name)
        if m is not None and m.blocked:
            blocked.append(f"{name} {qtype}")
    cached = [f"c{i}.cached.bench.example A" for i in range(1000)]
    mix = []
    for i in range(20_000):
        mix.append(blocked[i % len(blocked)] if i % 10 == 0 else cached[i % len(cached)])
    run = f"{rng.getrandbits(32):08x}"
    miss = [f"m{i}.{run}.miss.bench.example A" for i in range(miss_names)]
    for fname, lines in (("blocked.txt", blocked), ("cached.txt", cached), ("mix.txt", mix), ("miss.txt", miss)):
        (out / fname).write_text("\n".join(lines) + "\n")
    print(f"{out}: {len(blocked)} blocked, {len(cached)} cached, {len(miss)} miss queries; feed {feed_names} names")


def summary(path: Path) -> None:
    text = path.read_text(errors="replace")
    qps = re.search(r"Queries per second:\s+([\d.]+)", text)
    avg = re.search(r"Average Latency \(s\):\s+([\d.]+)", text)
    lost = re.search(r"Queries lost:\s+(\d+)", text)
    print(
        f"{float(qps.group(1)) if qps else 0:.0f} {float(avg.group(1)) * 1000 if avg else 0:.3f} "
        f"{lost.group(1) if lost else '?'}"
    )


def latency(path: Path) -> None:
    values = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("> "):
            try:
                values.append(float(line.split()[-1]))
            except ValueError:
                continue
    if not values:
        print("0 0 0")
        return
    values.sort()
    p50 = values[len(values) // 2]
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    print(f"{p50 * 1000:.3f} {p99 * 1000:.3f} {len(values)}")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("out", type=Path)
    m.add_argument("--feed-names", type=int, default=100_000)
    m.add_argument("--miss-names", type=int, default=2_000_000)
    m.add_argument("--seed", type=int, default=7)
    s = sub.add_parser("summary")
    s.add_argument("path", type=Path)
    la = sub.add_parser("latency")
    la.add_argument("path", type=Path)
    args = p.parse_args()
    if args.cmd == "make":
        make(args.out, args.feed_names, args.miss_names, args.seed)
    elif args.cmd == "summary":
        summary(args.path)
    else:
        latency(args.path)


if __name__ == "__main__":
    main()
