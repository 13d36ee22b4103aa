"""bench/policy_bench.py still runs end to end (tiny sizes, no timing asserted: speed lives in the benchmark)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from bench.policy_bench import make_feed, make_queries, random_name
from enforcer.policy import load_policy
from tests.conftest import ROOT, find_tool


def test_feed_is_valid_and_queries_mix_hits_and_misses(tmp_path: Path) -> None:
    blocklist, names = make_feed(tmp_path, 3000)
    assert len(set(names)) == 3000 and all(2 <= n.count(".") + 1 <= 5 for n in names)
    policy = load_policy(blocklist)
    assert policy.counts[("bench", "include")] == 3000
    queries = make_queries(names, 1000)
    hits = sum(policy.match_name(q) is not None for q in queries)
    assert 450 <= hits < 1000
    assert all(q.count(".") >= 3 for q in queries[::2])
    assert random_name(random.Random(5), 4).count(".") >= 3


def test_bench_runs_small(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/policy_bench.py", "--sizes", "2000", "--lookups", "2000", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = json.loads(out.read_text())["sizes"]["2000"]
    assert entry["names"] == 2002  # the feed plus the two explicit rules
    assert entry["load_s"] > 0 and entry["peak_rss_mb"] > entry["interpreter_rss_mb"] > 0
    assert entry["match_name_per_s"] > 0 and entry["match_key_per_s"] > 0
    assert isinstance(entry["enforcer_export_dnsmasq_s"], float)
    if find_tool("dnsmasq"):
        assert isinstance(entry["dnsmasq_test_s"], float) and entry["load_ratio_vs_dnsmasq_test"] > 0
