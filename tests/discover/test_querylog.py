"""The sampled query log (enforcer/dns/querylog.py): written off the caller's thread, sampled, bounded by size with
rotation, 0600, bounded queue, and read back across rotated files in order."""

from __future__ import annotations

import stat
from pathlib import Path

from enforcer.dns.querylog import QueryLog, iter_query_log
from tests.conftest import eventually


def test_every_record_at_rate_one_survives_rotation_in_order(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    qlog = QueryLog(path, 1.0, max_bytes=2000, backups=50, flush_interval=0.01)
    try:
        for i in range(300):
            qlog.record("127.0.0.9", f"n{i}.example", 1)
            if i % 50 == 0:
                qlog.flush()
    finally:
        qlog.close()
    assert qlog.written == 300 and qlog.dropped == 0
    assert (tmp_path / "q.jsonl.1").exists()  # it rotated
    docs = list(iter_query_log(path))
    assert [d["name"] for d in docs] == [f"n{i}.example" for i in range(300)]
    assert docs[0]["client"] == "127.0.0.9" and docs[0]["type"] == "A"
    assert stat.S_IMODE((tmp_path / "q.jsonl.1").stat().st_mode) == 0o600  # it names clients: owner only


def test_retention_is_bounded_by_backups(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    qlog = QueryLog(path, 1.0, max_bytes=500, backups=2, flush_interval=0.01)
    try:
        for i in range(200):
            qlog.record("10.0.0.1", f"name{i}.example", 1)
            qlog.flush()
    finally:
        qlog.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert set(files) <= {"q.jsonl", "q.jsonl.1", "q.jsonl.2"} and "q.jsonl.2" in files
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) < 3 * 500 + 3 * 100
    names = [d["name"] for d in iter_query_log(path)]
    assert names[-1] == "name199.example" and "name0.example" not in names


def test_sampling_and_the_bounded_queue(tmp_path: Path) -> None:
    off = QueryLog(tmp_path / "off.jsonl", 0.0)
    for _ in range(1000):
        off.record("10.0.0.1", "x.example", 1)
    off.close()
    assert off.written == 0 and not (tmp_path / "off.jsonl").exists()

    tenth = QueryLog(tmp_path / "s.jsonl", 0.1, flush_interval=0.01)
    for _ in range(5000):
        tenth.record("10.0.0.1", "x.example", 1)
    tenth.close()
    assert 300 < tenth.written < 700, tenth.written  # 500 expected; binomial sd ~21

    # A writer that cannot keep up: the queue stops at max_queue and the rest is counted as dropped.
    full = QueryLog(tmp_path / "f.jsonl", 1.0, max_queue=100, flush_interval=60)
    for _ in range(1000):
        full.record("10.0.0.1", "x.example", 1)
    assert full.dropped >= 900 - 100  # the thread may have drained one batch meanwhile
    full.close()
    eventually(lambda: full.written + full.dropped == 1000, timeout=5)


def test_bad_sample_rate_is_one_line_error() -> None:
    from tests.conftest import run_cli

    for value, why in (("2", "must be between 0 and 1"), ("abc", "not a number")):
        out = run_cli("dns", "--upstream", "127.0.0.1:9", "--query-log", "/nonexistent/q.jsonl",
                      "--query-log-sample", value)  # fmt: skip
        assert out.returncode == 1 and out.stderr == f"enforcer dns: --query-log-sample {value!r}: {why}\n"
