"""PolicyHolder: a good edit swaps the policy, a broken edit keeps the last good one (logged, counted), include-file
edits are seen, and the async watcher reloads off the loop by itself."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from enforcer.metrics import Metrics
from enforcer.policy import Policy, PolicyError
from enforcer.policy.reloader import PolicyHolder
from tests.policy.policy_helpers import app_yaml, write

GOOD = app_yaml("t", "block:\n  - domain: one.example\n    category: web\n  - include: feed.txt\n    category: web\n")


def _setup(tmp_path: Path) -> tuple[Path, PolicyHolder, CollectorRegistry, list[Policy]]:
    write(tmp_path, "feed.txt", "feed-a.example\n")
    path = write(tmp_path, "t.yaml", GOOD)
    registry = CollectorRegistry()
    changes: list[Policy] = []
    holder = PolicyHolder(tmp_path, metrics=Metrics(registry), on_change=changes.append)
    return path, holder, registry, changes


def _reloads(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("enforcer_policy_reloads_total", {"result": result}) or 0.0


def _touch_later(path: Path) -> None:
    # Make sure the stat snapshot differs even on coarse-mtime file systems.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_good_edit_swaps(tmp_path: Path) -> None:
    path, holder, registry, changes = _setup(tmp_path)
    first = holder.policy
    assert first.match_name("one.example") is not None and _reloads(registry, "success") == 1
    assert not holder.changed()
    path.write_text(GOOD.replace("one.example", "two.example"))
    _touch_later(path)
    assert holder.changed()
    assert holder.reload() is True
    assert holder.policy is not first and holder.policy.fingerprint != first.fingerprint
    assert holder.policy.match_name("two.example") is not None and holder.policy.match_name("one.example") is None
    assert changes == [holder.policy]
    assert _reloads(registry, "success") == 2
    info = registry.get_sample_value("enforcer_policy_info", {"fingerprint": holder.policy.fingerprint})
    assert info == 1.0
    assert registry.get_sample_value("enforcer_policy_rules", {"app": "t", "kind": "domain"}) == 1.0


def test_broken_edit_keeps_last_good(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, holder, registry, changes = _setup(tmp_path)
    good = holder.policy
    path.write_text(GOOD.replace("category: web", "category: games", 1))
    with caplog.at_level(logging.ERROR, logger="enforcer.policy"):
        assert holder.reload() is False
    assert holder.policy is good
    assert (
        holder.last_error == f"{path}:7:15: unknown category 'games' (expected one of: messaging, update, "
        "download, store, telemetry, payments, bypass, web)"
    )
    assert holder.last_error in caplog.text and "keeping the last good policy" in caplog.text
    assert _reloads(registry, "failure") == 1 and changes == []
    # A broken edit is not retried in a loop: the snapshot was taken, so nothing looks changed until the next edit.
    assert not holder.changed()
    path.write_text(GOOD)
    _touch_later(path)
    assert holder.reload() is True and holder.policy.fingerprint == good.fingerprint


def test_include_file_edit_is_detected(tmp_path: Path) -> None:
    _path, holder, _registry, _changes = _setup(tmp_path)
    feed = tmp_path / "feed.txt"
    assert feed in holder.watched_files()
    feed.write_text("feed-a.example\nfeed-b.example\n")
    _touch_later(feed)
    assert holder.changed()
    assert holder.reload() is True
    assert holder.policy.match_name("x.feed-b.example") is not None
    feed.write_text("bad..name\n")
    _touch_later(feed)
    assert holder.reload() is False
    assert holder.last_error == f"{feed}:1:1: invalid domain: empty label in 'bad..name'"
    assert holder.policy.match_name("x.feed-b.example") is not None


def test_first_load_must_succeed(tmp_path: Path) -> None:
    write(tmp_path, "t.yaml", "app: t\n")
    with pytest.raises(PolicyError):
        PolicyHolder(tmp_path)


async def test_watch_reloads_by_itself(tmp_path: Path) -> None:
    path, holder, registry, changes = _setup(tmp_path)
    task = asyncio.create_task(holder.watch(interval=0.05, settle=0.02))
    try:
        path.write_text(GOOD.replace("one.example", "three.example"))
        _touch_later(path)
        for _ in range(200):  # bounded: 10 s at most
            await asyncio.sleep(0.05)
            if changes:
                break
        assert changes and holder.policy.match_name("three.example") is not None
        path.write_text("app: [broken\n")
        _touch_later(path)
        for _ in range(200):
            await asyncio.sleep(0.05)
            if _reloads(registry, "failure"):
                break
        assert _reloads(registry, "failure") == 1
        assert holder.policy.match_name("three.example") is not None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_sighup_reloads(tmp_path: Path) -> None:
    import signal

    path, holder, _registry, changes = _setup(tmp_path)
    loop = asyncio.get_running_loop()
    assert holder.install_sighup(loop) is True
    try:
        path.write_text(GOOD.replace("one.example", "four.example"))
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            await asyncio.sleep(0.05)
            if changes:
                break
        assert holder.policy.match_name("four.example") is not None
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
