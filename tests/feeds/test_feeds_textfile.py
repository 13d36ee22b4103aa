"""``enforcer feeds update --metrics-textfile FILE`` (enforcer/feeds/cli.py): a run by hand or from cron writes the
feed metrics that ``--feeds-refresh`` exports to a Prometheus textfile, read back here with prometheus_client's
parser, against the local HTTPS feed server (tests/feeds/feedserver.py)."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from enforcer.policy.feeds import local_copy
from tests.conftest import run_cli
from tests.feeds.feedserver import NAMES, FeedServer, blocklist, feed


def read_textfile(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(path.read_text()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def update(folder: Path, cert: Path, *more: str) -> tuple[int, str]:
    proc = run_cli("feeds", "update", "--blocklist", str(folder), "--cafile", str(cert), "--timeout", "10", *more)
    return proc.returncode, proc.stdout + proc.stderr


def test_textfile_has_the_refresh_metrics_of_each_run(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    srv, cert = server
    srv.set("/w.txt", feed(NAMES))
    folder = blocklist(tmp_path / "bl", srv.url("/w.txt"))
    key = local_copy(folder, srv.url("/w.txt")).stem
    prom_dir = tmp_path / "textfile"
    prom_dir.mkdir()
    prom = prom_dir / "enforcer_feeds.prom"

    code, out = update(folder, cert, "--metrics-textfile", str(prom))
    assert code == 0 and "updated: +20 -0" in out, out
    m = read_textfile(prom)
    assert m[("enforcer_feed_updates_total", (("feed", key), ("result", "updated")))] == 1
    for result in ("unchanged", "refused", "failed"):  # every result exported, 0 when it did not happen
        assert m[("enforcer_feed_updates_total", (("feed", key), ("result", result)))] == 0
    assert m[("enforcer_feed_refresh_seconds", (("feed", key),))] == 6 * 3600
    assert 0 <= m[("enforcer_feed_age_seconds", (("feed", key),))] < 60  # just confirmed
    assert [p.name for p in prom_dir.iterdir()] == [prom.name]  # the temporary file was renamed over it

    # The next run replaces the file: this run's figures, not a sum of both.
    code, out = update(folder, cert, "--metrics-textfile", str(prom))
    assert code == 0 and "unchanged" in out, out
    m = read_textfile(prom)
    assert m[("enforcer_feed_updates_total", (("feed", key), ("result", "unchanged")))] == 1
    assert m[("enforcer_feed_updates_total", (("feed", key), ("result", "updated")))] == 0

    # A failed download: counted, and the age keeps growing from the last confirmation (what the age alert watches).
    meta = local_copy(folder, srv.url("/w.txt")).with_suffix(".json")
    data = json.loads(meta.read_text())
    data["checked_at"] -= 7200
    meta.write_text(json.dumps(data))
    srv.bodies.pop("/w.txt")
    code, out = update(folder, cert, "--metrics-textfile", str(prom))
    assert code == 1, out
    m = read_textfile(prom)
    assert m[("enforcer_feed_updates_total", (("feed", key), ("result", "failed")))] == 1
    assert 7200 <= m[("enforcer_feed_age_seconds", (("feed", key),))] < 7200 + 60


def test_textfile_errors_are_one_line(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    srv, cert = server
    srv.set("/w.txt", feed(NAMES))
    folder = blocklist(tmp_path / "bl", srv.url("/w.txt"))
    missing = tmp_path / "no-such-dir" / "feeds.prom"
    code, out = update(folder, cert, "--metrics-textfile", str(missing))
    assert code == 1 and f"cannot write the metrics textfile {missing}" in out, out
    assert local_copy(folder, srv.url("/w.txt")).read_bytes() == feed(NAMES)  # the update itself went through
    code, out = update(folder, cert, "--metrics-textfile", str(tmp_path / "x.prom"), "--dry-run")
    assert code == 2 and "not with --dry-run" in out, out
    assert not (tmp_path / "x.prom").exists()
