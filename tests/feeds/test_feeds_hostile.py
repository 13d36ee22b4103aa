"""A hostile or broken feed server against ``enforcer feeds update`` (a review acted one out; each case here failed
before its fix): a new public suffix, a plain-http hop in a redirect chain, lines that cost hours or gigabytes to
read, a folder that cannot be written, a 304 to an unconditional request, a local copy that no longer reads, and the
scheduler's metrics when an update breaks. Every refusal and failure must leave the last good copy byte for byte."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from enforcer.feeds import schedule as schedule_mod
from enforcer.feeds.schedule import FeedScheduler
from enforcer.policy import load_policy
from enforcer.policy.feeds import local_copy
from tests.conftest import small_tmpfs
from tests.feeds.feedserver import NAMES, FeedServer, blocklist, feed
from tests.feeds.test_feeds_schedule import samples
from tests.feeds.test_feeds_update import first_copy, update


@pytest.mark.parametrize("suffix", ["org", "co.uk", "gov"])
def test_a_new_public_suffix_is_refused(tmp_path: Path, server: tuple[FeedServer, Path], suffix: str) -> None:
    """must-pass.txt stopped com and net only because it lists qq.com and google.com; org (every .org site) went in."""
    srv, cert = server
    folder, local = first_copy(tmp_path, srv, cert)
    before = local.read_bytes()
    srv.set("/w.txt", feed([*NAMES, suffix]))
    code, out = update(folder, cert)
    assert code == 1 and f"refused: adds over-broad entry {suffix}: a public suffix" in out, out
    assert local.read_bytes() == before
    assert load_policy(folder).match_name(f"www.example.{suffix}") is None


def test_a_plain_http_hop_in_the_redirects_is_refused(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    """https -> http -> https: only the last hop was checked, so whoever holds the plain hop chose the feed."""
    srv, cert = server
    folder, local = first_copy(tmp_path, srv, cert)
    before = local.read_bytes()
    with FeedServer() as plain:
        srv.set("/evil.txt", feed([*NAMES, "wikipedia.example"]))
        plain.redirects["/hop"] = srv.url("/evil.txt")
        srv.redirects["/w.txt"] = plain.url("/hop")
        code, out = update(folder, cert)
        assert plain.requests, "the chain was not followed: the test proves nothing"
    assert code == 1 and "redirected from https to http (127.0.0.1): refused" in out, out
    assert local.read_bytes() == before


def test_bad_lines_are_refused_in_linear_time_and_in_short_messages(
    tmp_path: Path, server: tuple[FeedServer, Path]
) -> None:
    """A hosts line of 300,000 distinct bad tokens (a search per token for its column: minutes) and a 2 MB
    non-ASCII token (the IDNA codec on all of it: gigabytes; the message repeated it whole)."""
    srv, cert = server
    folder, local = first_copy(tmp_path, srv, cert)
    before = local.read_bytes()
    hosts_line = "0.0.0.0 " + " ".join(f"-x{i}" for i in range(300_000))
    srv.set("/w.txt", feed([*NAMES, hosts_line, "é" * 2_000_000]))
    code, out = update(folder, cert)  # in this process: a regression shows as a slow test (the run's timeout)
    assert code == 1 and "refused: 300001 invalid line(s)" in out, out[:2000]
    assert len(out) < 20_000, len(out)  # 20 lines of problems, each cut short
    assert local.read_bytes() == before


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "bl", "4m") as disk:
        yield disk


def test_a_folder_that_cannot_be_written_fails_in_one_line(
    tmp_path: Path, server: tuple[FeedServer, Path], small_disk: Path
) -> None:
    """A read-only folder gave a traceback; in the scheduler it also skipped the metrics (the age froze)."""
    srv, cert = server
    srv.set("/w.txt", feed(NAMES))
    folder = blocklist(small_disk, srv.url("/w.txt"))
    code, out = update(folder, cert)
    assert code == 0, out
    local = local_copy(folder, srv.url("/w.txt"))
    before = local.read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True, timeout=10)
    srv.set("/w.txt", feed([*NAMES, "new.feedtest.example"]))
    code, out = update(folder, cert)
    assert code == 1 and "failed: cannot write" in out and "Read-only file system" in out, out
    assert "Traceback" not in out and local.read_bytes() == before
    registry = CollectorRegistry()
    sched = FeedScheduler([folder], registry, cafile=str(cert), clock=lambda: 4e9)
    assert asyncio.run(sched.run_once()) == [local.stem]
    m = samples(registry)
    assert m[("enforcer_feed_updates_total", (("feed", local.stem), ("result", "failed")))] == 1
    assert m[("enforcer_feed_age_seconds", (("feed", local.stem),))] > 1e9  # published: the stale alert can fire


def test_a_304_to_an_unconditional_request_is_a_failure(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    """With no copy no validator is sent: a 304 vouches for nothing (it said 'unchanged', and the check then said
    'no local copy yet: run enforcer feeds update')."""
    srv, cert = server
    srv.not_modified.add("/w.txt")
    folder = blocklist(tmp_path / "bl", srv.url("/w.txt"))
    code, out = update(folder, cert)
    assert code == 1 and "failed: HTTP 304 to a request without validators; there is no local copy yet" in out, out
    assert not local_copy(folder, srv.url("/w.txt")).exists()


@pytest.mark.parametrize("copy", [b"", b"not a feed line\n"], ids=["empty", "unreadable"])
def test_a_copy_that_does_not_read_is_not_a_free_pass(
    tmp_path: Path, server: tuple[FeedServer, Path], copy: bytes
) -> None:
    """max_change compares with the copy: an empty or broken one let any new copy in, reported as '+1000 -0'."""
    srv, cert = server
    folder, local = first_copy(tmp_path, srv, cert)
    local.write_bytes(copy)
    srv.set("/w.txt", feed([f"n{i}.feedtest.example" for i in range(1000)]))
    code, out = update(folder, cert)
    assert code == 1 and "is empty or does not read as a feed" in out and "delete it" in out, out
    assert local.read_bytes() == copy
    local.unlink()
    code, out = update(folder, cert)
    assert code == 0 and "updated: +1000 -0 names, 1000 in all" in out, out


def test_a_copy_its_metadata_does_not_describe_is_fetched_again(
    tmp_path: Path, server: tuple[FeedServer, Path]
) -> None:
    """Two updates at once could leave copy B with A's ETag; the server's 304 then vouched for the wrong copy for
    ever. Validators are sent only for the copy their sha256 describes."""
    srv, cert = server
    folder, local = first_copy(tmp_path, srv, cert)
    local.write_bytes(feed([*NAMES[:19], "other.feedtest.example"]))  # the copy changed, its metadata did not
    code, out = update(folder, cert)
    assert srv.requests[-1][1] is None  # unconditional: no If-None-Match for a copy it does not describe
    assert code == 0 and "updated: +1 -1 names" in out, out
    assert local.read_bytes() == feed(NAMES)


def test_a_broken_update_still_publishes_the_metrics(
    tmp_path: Path, server: tuple[FeedServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, cert = server
    folder, local = first_copy(tmp_path, srv, cert)

    async def broken(*_args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(schedule_mod, "update_feed", broken)
    registry = CollectorRegistry()
    sched = FeedScheduler([folder], registry, cafile=str(cert), clock=lambda: 4e9)
    assert asyncio.run(sched.run_once()) == [local.stem]
    m = samples(registry)
    assert m[("enforcer_feed_updates_total", (("feed", local.stem), ("result", "failed")))] == 1
    assert m[("enforcer_feed_age_seconds", (("feed", local.stem),))] > 1e9
