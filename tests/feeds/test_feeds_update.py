"""``enforcer feeds update`` against a local HTTPS feed server (tests/feeds/feedserver.py, a test CA from
tests/certs.py): a normal update, a 304, a feed that tries to block qq.com, a cut download, a 50 % shrink, a pinned feed
whose content changed, a dry run, TLS verification, and the loader's view of a URL include (no copy yet, a tampered
pinned copy). Every refusal must leave the last good copy byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from enforcer.policy import load_policy
from enforcer.policy.feeds import local_copy
from tests.conftest import run_cli
from tests.feeds.feedserver import NAMES, FeedServer, blocklist, feed


def update(folder: Path, cert: Path, *more: str) -> tuple[int, str]:
    proc = run_cli("feeds", "update", "--blocklist", str(folder), "--cafile", str(cert), "--timeout", "10", *more)
    return proc.returncode, proc.stdout + proc.stderr


def test_update_then_304_then_growth(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    srv, cert = server
    srv.set("/w.txt", feed(NAMES))
    folder = blocklist(tmp_path / "bl", srv.url("/w.txt"))
    local = local_copy(folder, srv.url("/w.txt"))

    # Before the first update the loader says what to do.
    proc = run_cli("check", "--blocklist", str(folder))
    assert proc.returncode == 1 and "has no local copy yet" in proc.stderr and "enforcer feeds update" in proc.stderr

    code, out = update(folder, cert)
    assert code == 0 and "updated: +20 -0 names, 20 in all" in out, out
    assert local.read_bytes() == feed(NAMES)
    policy = load_policy(folder)
    match = policy.match_name("x.h07.feedtest.example")
    assert match is not None and match.rule.id == f"feedtest:include:{srv.url('/w.txt')}"

    # Same content again: the stored ETag makes it a conditional request, answered 304.
    code, out = update(folder, cert)
    assert code == 0 and "unchanged: not modified (304)" in out, out
    assert srv.requests[-1][1] is not None and srv.requests[-1][1].startswith('"')

    # One name added (5 % < max_change 10 %): swapped, and the diff names it.
    srv.set("/w.txt", feed([*NAMES, "new.feedtest.example"]))
    code, out = update(folder, cert)
    assert code == 0 and "updated: +1 -0" in out and "  + new.feedtest.example" in out, out
    assert load_policy(folder).match_name("new.feedtest.example") is not None


def first_copy(tmp_path: Path, srv: FeedServer, cert: Path) -> tuple[Path, Path]:
    srv.set("/w.txt", feed(NAMES))
    folder = blocklist(tmp_path / "bl", srv.url("/w.txt"))
    code, out = update(folder, cert)
    assert code == 0, out
    return folder, local_copy(folder, srv.url("/w.txt"))


def test_feed_that_blocks_a_must_pass_name_is_refused(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    srv, cert = server
    folder, local = first_copy(tmp_path, srv, cert)
    before = local.read_bytes()
    srv.set("/w.txt", feed([*NAMES[:19], "qq.com"]))  # -1 +1 of 20: 10 %, within max_change
    code, out = update(folder, cert, "--json")
    doc = json.loads(out.splitlines()[0])
    assert code == 1 and doc["result"] == "refused" and doc["must_pass_blocked"] == ["qq.com"], out
    assert "qq.com" in doc["message"]
    code, out = update(folder, cert)
    assert code == 1 and "must-pass qq.com would be blocked by feedtest:include:" in out, out
    assert local.read_bytes() == before
    assert load_policy(folder).match_name("qq.com") is None


def test_cut_download_keeps_the_last_good_copy(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    srv, cert = server
    folder, local = first_copy(tmp_path, srv, cert)
    before = local.read_bytes()
    srv.set("/w.txt", feed([*NAMES, "new.feedtest.example"]))
    srv.truncate("/w.txt")
    code, out = update(folder, cert)
    assert code == 1 and ": failed: " in out and "cut short" in out and "last good copy is kept" in out, out
    assert local.read_bytes() == before


def test_half_the_names_gone_is_refused_by_max_change(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    srv, cert = server
    folder, local = first_copy(tmp_path, srv, cert)
    before = local.read_bytes()
    srv.set("/w.txt", feed(NAMES[:10]))
    code, out = update(folder, cert)
    assert code == 1 and "refused: 50% of the names changed (+0 -10 of 20), above max_change 10%" in out, out
    assert "  - h19.feedtest.example" in out  # the diff is shown even when refused
    assert local.read_bytes() == before


def test_dry_run_swaps_nothing(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    srv, cert = server
    folder, local = first_copy(tmp_path, srv, cert)
    before = local.read_bytes()
    srv.set("/w.txt", feed([*NAMES, "new.feedtest.example"]))
    code, out = update(folder, cert, "--dry-run")
    assert code == 0 and "would_update: +1 -0 names (dry run)" in out, out
    assert local.read_bytes() == before


def test_pinned_feed_whose_content_changed_is_refused(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    srv, cert = server
    body = feed(NAMES)
    srv.set("/p.txt", body)
    folder = tmp_path / "bl"
    folder.mkdir()
    pin = hashlib.sha256(body).hexdigest()
    (folder / "p.yaml").write_text(
        "app: pinned\npolicy: {effective: 2023-10-30}\nblock:\n"
        f'  - include: {{url: "{srv.url("/p.txt")}", sha256: {pin}}}\n    category: web\n'
    )
    local = local_copy(folder, srv.url("/p.txt"))
    code, out = update(folder, cert)
    assert code == 0 and "updated" in out, out
    assert local.read_bytes() == body

    srv.set("/p.txt", feed([*NAMES, "sneaky.feedtest.example"]))
    code, out = update(folder, cert)
    assert code == 1 and "refused: content changed: sha256" in out and f"does not match the pin {pin}" in out, out
    assert local.read_bytes() == body

    # A copy changed behind the updater's back is refused by the loader itself.
    local.write_bytes(feed(NAMES[:3]))
    proc = run_cli("check", "--blocklist", str(folder))
    assert proc.returncode == 1 and "does not match its sha256 pin" in proc.stderr, proc.stderr


def test_tls_is_verified(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    srv, _cert = server
    srv.set("/w.txt", feed(NAMES))
    folder = blocklist(tmp_path / "bl", srv.url("/w.txt"))
    proc = run_cli("feeds", "update", "--blocklist", str(folder), "--timeout", "10")
    assert proc.returncode == 1 and "failed" in proc.stdout and "certificate" in proc.stdout.lower(), proc.stdout
    assert not local_copy(folder, srv.url("/w.txt")).exists()


def test_bad_feed_line_is_refused_and_located(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    srv, cert = server
    folder, local = first_copy(tmp_path, srv, cert)
    before = local.read_bytes()
    srv.set("/w.txt", feed([*NAMES[:19], "bad..name"]))
    code, out = update(folder, cert)
    assert code == 1 and "refused: 1 invalid line(s)" in out and f"{srv.url('/w.txt')}:21:1: invalid domain" in out
    assert local.read_bytes() == before


def test_invalid_url_include_is_a_located_error(tmp_path: Path) -> None:
    folder = tmp_path / "bl"
    folder.mkdir()
    (folder / "x.yaml").write_text(
        "app: x\npolicy: {effective: 2023-10-30}\nblock:\n"
        '  - include: {url: "ftp://h/x.txt", refresh: 6h}\n    category: web\n'
        '  - include: {url: "https://h/y.txt", refresh: often}\n    category: web\n'
    )
    proc = run_cli("check", "--blocklist", str(folder))
    assert proc.returncode == 1
    assert f"{folder}/x.yaml:4:14: 'url' must be an http:// or https:// URL" in proc.stderr, proc.stderr
    assert f"{folder}/x.yaml:6:14: expected a duration such as 6h" in proc.stderr, proc.stderr


def test_the_resolver_picks_up_a_swapped_copy_by_its_usual_reload(
    tmp_path: Path, server: tuple[FeedServer, Path]
) -> None:
    """A real ``enforcer dns`` on the blocklist: after ``feeds update`` swaps the copy, the new name is blocked
    without a restart or a signal (the reloader watches the local copy of a URL include)."""
    from tests.conftest import eventually
    from tests.dns.dnshelpers import DnsProcess, addresses
    from tests.dns.fakeupstream import FakeUpstream

    srv, cert = server
    folder, _local = first_copy(tmp_path, srv, cert)
    up = FakeUpstream()
    proc = DnsProcess(tmp_path, "--upstream", up.address, "--blocklist", str(folder))
    try:
        assert addresses(proc.query("h03.feedtest.example", "A")) == ["0.0.0.0"]
        assert addresses(proc.query("new.feedtest.example", "A")) == ["192.0.2.53"]  # forwarded: not listed yet
        srv.set("/w.txt", feed([*NAMES, "new.feedtest.example"]))
        code, out = update(folder, cert)
        assert code == 0 and "updated: +1 -0" in out, out
        eventually(lambda: addresses(proc.query("new.feedtest.example", "A")) == ["0.0.0.0"], timeout=15,
                   message=proc.stderr_text)  # fmt: skip
    finally:
        assert proc.stop() == 0, proc.stderr_text()
        up.close()


def test_first_run_with_two_new_feeds_fetches_both(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    srv, cert = server
    srv.set("/w.txt", feed(NAMES))
    srv.set("/k.txt", feed([f"k{i}.feedtest.example" for i in range(5)]))
    extra = f'  - include: {{url: "{srv.url("/k.txt")}", refresh: 1d}}\n    category: update\n'
    folder = blocklist(tmp_path / "bl", srv.url("/w.txt"), extra)
    code, out = update(folder, cert)
    assert code == 0 and out.count(": updated: ") == 2, out
    policy = load_policy(folder)
    assert policy.match_name("h01.feedtest.example") is not None and policy.match_name("k4.feedtest.example")


def test_compressed_feed_and_the_size_cap(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    srv, cert = server
    srv.set("/w.txt", feed(NAMES))
    srv.gzipped.add("/w.txt")  # Content-Length counts compressed bytes; the body is read decompressed
    folder = blocklist(tmp_path / "bl", srv.url("/w.txt"))
    local = local_copy(folder, srv.url("/w.txt"))
    code, out = update(folder, cert, "--max-bytes", "100")
    assert code == 1 and "failed: feed too large: over 100 bytes" in out, out
    assert not local.exists()
    code, out = update(folder, cert)
    assert code == 0 and "updated: +20 -0 names" in out, out
    assert local.read_bytes() == feed(NAMES)


def test_a_feed_saved_with_a_byte_order_mark_is_read(tmp_path: Path, server: tuple[FeedServer, Path]) -> None:
    """A hosts-format list saved by a Windows editor starts with U+FEFF: its first line was 'expected one domain per
    line' and the whole feed was refused (a list of bare names passed only because IDNA drops the mark)."""
    srv, cert = server
    body = "\ufeff# exported\n" + "".join(f"0.0.0.0 {n}\n" for n in NAMES)
    srv.set("/w.txt", body.encode("utf-8"))
    folder = blocklist(tmp_path / "bl", srv.url("/w.txt"))
    code, out = update(folder, cert)
    assert code == 0 and "updated" in out, out
    policy = load_policy(folder)
    assert all(policy.match_name(n) is not None for n in NAMES)
