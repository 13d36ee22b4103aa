"""The report's deferred counting gives what counting each event in file order gives (enforcer/analyst/report.py).

- ``_Counter.count_rows`` only appends each writer line's time to its client's and app's times; ``settle`` decides
  the enforced hits, the entry and its last address afterwards. Where that needs the order of the events (a device
  with two addresses whose last hits share a microsecond; a device that also has proxy-login events, whose last
  user depends on when each was read) the range is counted again event by event: the tallies equal those of the
  line rule (the block search disabled), whatever the order.
- ``identity.bursts`` (C-level maps, a Python step only for hits close to the one before) equals the plain loop.
- The block test that no line is oversize relies on ``_WRITER_MIN_BYTES``: no writer line is shorter.
- ``_one_hash_seed``: processes started inside it hash strings alike (the workers' fingerprints compare); the
  environment is restored.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enforcer.analyst import lines as lines_mod
from enforcer.analyst import report as report_mod
from enforcer.analyst.identity import Identifier, bursts
from enforcer.analyst.inventory import Inventory
from enforcer.analyst.leases import Lease, LeaseBook
from enforcer.analyst.lines import WRITER_LINES
from enforcer.analyst.report import Selection, enforcement_of, scan_range
from enforcer.policy import Policy
from tests.analyst.analyst_helpers import dns_hit

US = 1_000_000
T0 = datetime(2023, 11, 6, 9, 0, tzinfo=UTC)
MAC = "02:00:00:00:00:01"


def _us(dt: datetime) -> int:
    return int(dt.timestamp()) * US + dt.microsecond


def _book() -> LeaseBook:
    """One device holding two addresses at once (a lease on each), a second device on a third address."""
    book = LeaseBook()
    lo, hi = _us(T0 - timedelta(days=1)), _us(T0 + timedelta(days=1))
    book.add(Lease("10.9.0.1", lo, hi, mac=MAC))
    book.add(Lease("10.9.0.2", lo, hi, mac=MAC))
    book.add(Lease("10.9.0.3", lo, hi, mac="02:00:00:00:00:02"))
    return book


def _both(path: Path, policy: Policy, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """(tallies, stats) as the report counts them, and with every line taking the line rule."""
    book = _book()
    fast = scan_range(str(path), 0, None, Selection(enforcement_of(policy), identifier=Identifier(Inventory(), book)))
    with monkeypatch.context() as m:
        m.setattr(report_mod, "WRITER_LINES", re.compile(r"(?!)"))
        slow = scan_range(
            str(path), 0, None, Selection(enforcement_of(policy), identifier=Identifier(Inventory(), book))
        )
    return fast, slow


def _tallies(t: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
    return {k: [*v[:4], sorted(v[4]), *v[5:]] for k, v in t.items()}


@pytest.mark.parametrize("order", [("10.9.0.1", "10.9.0.2"), ("10.9.0.2", "10.9.0.1")])
def test_two_addresses_last_hit_at_one_microsecond(
    tmp_path: Path, policy: Policy, monkeypatch: pytest.MonkeyPatch, order: tuple[str, str]
) -> None:
    rnd = random.Random(7)
    lines = []
    for i in range(400):
        address = rnd.choice(("10.9.0.1", "10.9.0.2", "10.9.0.3"))
        lines.append(dns_hit(policy, "long.weixin.qq.com", address, T0 + timedelta(seconds=i)).to_json())
    last = T0 + timedelta(hours=2)
    lines += [dns_hit(policy, "long.weixin.qq.com", a, last).to_json() for a in order]  # one microsecond, two ids
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (fast, fast_stats), (slow, slow_stats) = _both(path, policy, monkeypatch)
    assert _tallies(fast) == _tallies(slow)
    assert fast_stats.events == slow_stats.events == 402
    (entry,) = [v for k, v in fast.items() if k[1] == "mac:" + MAC]
    assert entry[6] == order[1]  # the address of the last hit read


def test_a_device_with_proxy_logins_is_counted_in_file_order(
    tmp_path: Path, policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy event with ``user.name`` (the line rule) read after a later DNS hit of the same device: the last user
    is whatever reading in file order gives (one line a block: the DNS hits are counted by ``count_rows``)."""
    monkeypatch.setattr(lines_mod, "READ_BYTES", 256)
    lines = [
        dns_hit(policy, "long.weixin.qq.com", "10.9.0.1", T0 + timedelta(minutes=10)).to_json(),
        dns_hit(policy, "long.weixin.qq.com", "10.9.0.1", T0, user_name="alice").to_json(),
        dns_hit(policy, "long.weixin.qq.com", "10.9.0.3", T0 + timedelta(minutes=1)).to_json(),
        dns_hit(policy, "long.weixin.qq.com", "10.9.0.3", T0 + timedelta(minutes=2), user_name="bob").to_json(),
    ]
    assert WRITER_LINES.fullmatch(lines[0]) and not WRITER_LINES.fullmatch(lines[1])
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (fast, _), (slow, _) = _both(path, policy, monkeypatch)
    assert _tallies(fast) == _tallies(slow)
    users = {k[1]: v[7] for k, v in fast.items()}
    assert users == {"mac:" + MAC: "", "mac:02:00:00:00:00:02": "bob"}


def _bursts_loop(times: list[int], window_us: int) -> tuple[int, int]:
    n = n_enf = 0
    start = start_enf = -(1 << 62)
    for t in times:
        us = t >> 1
        if us - start >= window_us:
            n += 1
            start = us
        if t & 1 and us - start_enf >= window_us:
            n_enf += 1
            start_enf = us
    return n, n_enf


def test_bursts_equal_the_plain_loop() -> None:
    rnd = random.Random(11)
    checked = checked_all = 0
    for _ in range(3000):
        window = rnd.choice((0, 1, 2, 5, 60, 1000))
        spread = rnd.choice((3, 10, 100, 5000))
        mode = rnd.choice((2, 2, 1, 0))  # enforced at random, or all enforced, or none (bursts' shortcut)
        times = sorted(
            rnd.randrange(spread) * 2 + (rnd.randrange(2) if mode == 2 else mode) for _ in range(rnd.randrange(60))
        )
        want = _bursts_loop(times, window)
        assert bursts(times, window) == want, (times, window)
        assert bursts(iter(times), window) == want
        assert bursts(times, window, sum(t & 1 for t in times)) == want
        checked_all += bool(times) and len({t & 1 for t in times}) == 1
        checked += want[0] != len(times)  # some hits fall in an earlier hit's burst
    assert checked > 500 and checked_all > 500  # every hit enforced, or none: the shortcut


def test_no_writer_line_is_shorter_than_the_block_test_assumes() -> None:
    parsed = re._parser.parse(WRITER_LINES.pattern, WRITER_LINES.flags)  # type: ignore[attr-defined]
    assert parsed.getwidth()[0] >= report_mod._WRITER_MIN_BYTES


def test_processes_started_under_one_hash_seed_hash_alike() -> None:
    before = os.environ.get("PYTHONHASHSEED")
    code = "print(hash('10.1.2.3' + 'ab' * 16))"
    with report_mod._one_hash_seed():
        seen = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout for _ in range(2)}
    assert len(seen) == 1 and seen != {""}
    assert os.environ.get("PYTHONHASHSEED") == before
