"""``enforcer report`` with identities: wall time and peak RSS over N events with a Kea lease file and an inventory.

Usage: ``.venv/bin/python bench/report_bench.py [--events 1000000] [--leases 20000] [--workdir DIR]`` (default
``/tmp/enforcer-report-bench``; never the repository)

- Generates (once per size, reused) ``WORKDIR/events-N.jsonl``: N hit events written with the real
  ``HitEvent.to_json`` over 40 days (half before, half after the ban's effective date), from ``--leases / 2``
  addresses (10.x), both apps; ``WORKDIR/kea-leases4.csv``: ``--leases`` Kea memfile v4 rows, each address held by
  two devices one after the other (the first half of the span, then the second), plus a renewal row per lease; and
  ``WORKDIR/inventory.csv``: a ``mac,device,owner,unit`` row per device.
- Runs ``python -m enforcer report --format json --leases ... --inventory ...`` as a child process (default
  workers, then ``--workers 1``); wall time, the child's peak RSS (``wait4``) and the process tree's sampled peak
  (the child and its workers), reusing ``bench/analyst_bench.run_child``. Checks that every event was attributed
  to a lease (``identity`` ``lease``) and that the hits add up to N.

Prints one JSON object with the figures and the targets (10,000,000 events with 20,000 leases: <= 30 s, <= 300 MB).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from analyst_bench import run_child  # noqa: E402

from enforcer.events import HitEvent  # noqa: E402
from enforcer.policy import load_policy  # noqa: E402

SPAN_DAYS = 40


def _mac(i: int) -> str:
    return "02:00:" + ":".join(f"{b:02x}" for b in i.to_bytes(4, "big"))


def generate(workdir: Path, n: int, leases: int, seed: int = 1) -> dict[str, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    events = workdir / f"events-{n}.jsonl"
    lease_file, inventory = workdir / f"kea-leases4-{leases}.csv", workdir / f"inventory-{leases}.csv"
    policy = load_policy([ROOT / "blocklists"])
    effective = min(a.effective for a in policy.apps.values() if a.kind == "ban")
    start = (effective - timedelta(days=SPAN_DAYS / 2)).astimezone(UTC)  # UTC: no DST hour inside the span
    t0 = int(start.timestamp())
    half = SPAN_DAYS * 86400 // 2
    addresses = [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(max(1, leases // 2))]
    if not lease_file.exists() or not inventory.exists():
        with lease_file.open("w", encoding="utf-8") as fh, inventory.open("w", encoding="utf-8") as inv:
            fh.write(
                "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context\n"
            )
            inv.write("mac,device,owner,unit\n")
            for i, addr in enumerate(addresses):
                for holder in (0, 1):
                    dev = 2 * i + holder
                    begin = t0 + holder * half
                    # The grant, then a renewal half-way: two rows per lease, as Kea appends them.
                    fh.write(f"{addr},{_mac(dev)},,{half // 2},{begin + half // 2},1,0,0,dev-{dev},0,\n")
                    fh.write(f"{addr},{_mac(dev)},,{half // 2},{begin + half},1,0,0,dev-{dev},0,\n")
                    inv.write(f"{_mac(dev)},dev-{dev},owner {dev % 97},unit {dev % 13}\n")
    if not events.exists():
        _write_events(events, n, policy, start, addresses, seed)
    return {"events": events, "leases": lease_file, "inventory": inventory}


_SENTINEL_AT = datetime(2000, 1, 1, tzinfo=UTC)
_SENTINELS = ("2000-01-01T00:00:00.000000Z", "ffffffffffffffffffffffffffffffff", "192.0.2.254")
_CHECKED = 1000  # leading events also rendered by HitEvent.to_json and compared byte for byte


def _event(policy: Any, m: Any, name: str, at: datetime, ip: str, eid: str, enforced: bool) -> HitEvent:
    return HitEvent.from_match(
        m,
        action="dns-block",
        component="dns",
        version=policy.fingerprint,
        enforced=enforced,
        at=at,
        source_ip=ip,
        source_port=40000,
        dns_question_name=name,
        dns_question_type="A",
        id=eid,
    )


def _write_events(events: Path, n: int, policy: Any, start: datetime, addresses: list[str], seed: int) -> None:
    """N events: each name's line rendered once by ``HitEvent.to_json`` with sentinel time, id and address, then
    filled in per event (10M events in minutes instead of hours); the first ``_CHECKED`` are compared with a full
    ``HitEvent.to_json`` of the same values."""
    rnd = random.Random(seed)
    names = ["long.weixin.qq.com", "www.wechat.com", "kaspersky.com", "dnl-01.geo.kaspersky.com"]
    matches = [(name, policy.match_name(name)) for name in names]
    templates: dict[tuple[int, bool], list[str]] = {}
    for k, (name, m) in enumerate(matches):
        assert m is not None
        for enforced in (False, True):
            line = _event(policy, m, name, _SENTINEL_AT, _SENTINELS[2], _SENTINELS[1], enforced).to_json()
            parts = re.split("|".join(map(re.escape, _SENTINELS)), line)
            assert len(parts) == 4 and [line.index(x) for x in _SENTINELS] == sorted(line.index(x) for x in _SENTINELS)
            templates[k, enforced] = parts
    step_us = SPAN_DAYS * 86400 * 1_000_000 // n
    start_us = int(start.timestamp()) * 1_000_000
    effective_us = [int(m.app.effective.timestamp() * 1_000_000) for _, m in matches if m is not None]
    days: dict[int, str] = {}
    tmp = events.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        buf = []
        for i in range(n):
            at_us = start_us + i * step_us
            k = rnd.randrange(len(matches))
            ip = addresses[rnd.randrange(len(addresses))]
            eid = f"{rnd.getrandbits(128):032x}"
            day, rest = divmod(at_us, 86_400_000_000)
            date = days.get(day)
            if date is None:
                date = days[day] = datetime.fromtimestamp(day * 86400, UTC).strftime("%Y-%m-%dT")
            secs, us = divmod(rest, 1_000_000)
            stamp = f"{date}{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{us:06d}Z"
            name, m = matches[k]
            assert m is not None
            enforced = at_us >= effective_us[k]
            p0, p1, p2, p3 = templates[k, enforced]
            line = p0 + stamp + p1 + eid + p2 + ip + p3
            if i < _CHECKED:
                at = datetime.fromtimestamp(at_us // 1_000_000, UTC).replace(microsecond=at_us % 1_000_000)
                assert enforced == (at >= m.app.effective)
                assert line == _event(policy, m, name, at, ip, eid, enforced).to_json(), line
            buf.append(line)
            if len(buf) >= 10000:
                fh.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            fh.write("\n".join(buf) + "\n")
    tmp.replace(events)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--leases", type=int, default=20_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/enforcer-report-bench"))
    args = ap.parse_args()
    t = time.perf_counter()
    paths = generate(args.workdir, args.events, args.leases)
    gen = time.perf_counter() - t
    cmd = [
        sys.executable, "-m", "enforcer", "report", "--format", "json", "--events", str(paths["events"]),
        "--leases", str(paths["leases"]), "--inventory", str(paths["inventory"]),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3600)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    hits = sum(r["hits"] for r in doc["clients"])
    by_lease = sum(r["hits"] for r in doc["clients"] if r["identity"] == "lease")
    assert hits == by_lease == args.events, (hits, by_lease)
    dt, rss, tree, rc = run_child(cmd)
    assert rc == 0
    dt1, rss1, _, rc1 = run_child([*cmd, "--workers", "1"])
    assert rc1 == 0
    result = {
        "events": args.events,
        "leases": args.leases,
        "generate_seconds": round(gen, 1),
        "rows": len(doc["clients"]),
        "attempts": sum(r["attempts"] for r in doc["clients"]),
        "hits": hits,
        "report": {"seconds": round(dt, 2), "peak_rss_mb_per_process": rss, "peak_rss_mb_process_tree": tree},
        "report_one_worker": {"seconds": round(dt1, 2), "peak_rss_mb": rss1},
        "targets_at_10M_events_20k_leases": {"seconds": "<= 30", "peak_rss_mb": "<= 300"},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
