"""The blocklist loader reads only bounded, regular input: a FIFO, a device, an oversized file, deep YAML nesting or a
feed outside the blocklist folder is one ``PATH:LINE:COL`` error (no hang, no traceback, nothing of a foreign file
in the message), for include feeds and for the top-level files alike; and a running reloader is never wedged by
one: the next good edit is applied."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from enforcer.metrics import Metrics
from enforcer.policy import PolicyError, load_policy
from enforcer.policy.reloader import PolicyHolder
from tests.conftest import ROOT
from tests.policy.policy_helpers import app_yaml, write

GOOD = app_yaml("t", "block:\n  - domain: one.example\n    category: web\n")
SECRET = "TOPSECRET-do-not-echo root:$6$hash"


def _include(target: str) -> str:
    return app_yaml("t", f"block:\n  - include: {target}\n    category: web\n")


def _check(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """`enforcer check` as a real process; a hang on the old code is a TimeoutExpired failure, not a stuck run."""
    return subprocess.run(
        [sys.executable, "-m", "enforcer", "check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def _errors(folder: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(folder)
    return [str(p) for p in info.value.problems if p.severity == "error"]


# -- include feeds ------------------------------------------------------------------------------------------------


def _fifo_feed(folder: Path) -> str:
    os.mkfifo(folder / "feed.txt")
    return "cannot read include file 'feed.txt': not a regular file (a FIFO)"


def _fifo_behind_symlink(folder: Path) -> str:
    (folder / "pipes").mkdir()
    os.mkfifo(folder / "pipes" / "p")
    (folder / "feed.txt").symlink_to(folder / "pipes" / "p")
    return "cannot read include file 'feed.txt': not a regular file (a FIFO)"


def _feed_is_a_folder(folder: Path) -> str:
    (folder / "feed.txt").mkdir()
    return "cannot read include file 'feed.txt': not a regular file (a folder)"


def _oversized_feed(folder: Path) -> str:
    with open(folder / "feed.txt", "wb") as fh:  # sparse: 65 MiB of size, no disk
        fh.truncate(65 * 1024 * 1024)
    return f"cannot read include file 'feed.txt': file too large ({65 * 1024 * 1024} bytes; the limit is 67108864)"


@pytest.mark.parametrize(
    "make", [_fifo_feed, _fifo_behind_symlink, _feed_is_a_folder, _oversized_feed], ids=lambda f: f.__name__[1:]
)
def test_irregular_or_oversized_feed_is_one_clear_error(tmp_path: Path, make: object) -> None:
    folder = tmp_path / "lists"
    folder.mkdir()
    yaml_file = write(folder, "t.yaml", _include("feed.txt"))
    message = make(folder)  # type: ignore[operator]
    proc = _check(str(folder))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"{yaml_file}:6:14: {message}"]


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlink-to-device"])
def test_feed_outside_the_folder_is_refused_without_reading_it(tmp_path: Path, how: str) -> None:
    folder = tmp_path / "lists"
    folder.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text(f"{SECRET}\nbad..name\n")
    target = {
        "dotdot": "../secret.txt",
        "absolute": str(secret),
        "symlink": "feed.txt",
        "symlink-to-device": "zero.txt",
    }[how]
    if how == "symlink":
        (folder / "feed.txt").symlink_to(secret)
    if how == "symlink-to-device":
        (folder / "zero.txt").symlink_to("/dev/zero")
    yaml_file = write(folder, "t.yaml", _include(target))
    proc = _check(str(folder))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"{yaml_file}:6:14: include file '{target}' is outside the blocklist folder {folder.resolve()} "
        "(feeds must be in it)"
    ]
    assert "TOPSECRET" not in proc.stderr + proc.stdout


def test_feed_in_a_subfolder_and_by_absolute_path_inside_still_load(tmp_path: Path) -> None:
    folder = tmp_path / "lists"
    write(folder, "feeds/a.txt", "a.example\n")
    write(folder, "t.yaml", app_yaml("t", f"block:\n  - include: feeds/a.txt\n    category: web\n"
                                          f"  - include: {folder}/feeds/b.txt\n    category: web\n"))  # fmt: skip
    write(folder, "feeds/b.txt", "b.example\n")
    policy = load_policy(folder)
    assert policy.match_name("x.a.example") is not None and policy.match_name("b.example") is not None


def test_feed_size_cap_is_configurable(tmp_path: Path) -> None:
    folder = tmp_path / "lists"
    yaml_file = write(folder, "t.yaml", _include("feed.txt"))
    write(folder, "feed.txt", "".join(f"n{i}.example\n" for i in range(100)))  # 1190 bytes
    assert _check(str(folder)).returncode == 0
    proc = _check("--max-feed-bytes", "1000", str(folder))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"{yaml_file}:6:14: cannot read include file 'feed.txt': file too large (1190 bytes; the limit is 1000)"
    ]


# -- top-level blocklist files -------------------------------------------------------------------------------------


def _top_fifo(folder: Path) -> tuple[Path, str]:
    os.mkfifo(folder / "x.yaml")
    return folder / "x.yaml", "cannot read: not a regular file (a FIFO)"


def _top_device_symlink(folder: Path) -> tuple[Path, str]:
    (folder / "x.yaml").symlink_to("/dev/zero")
    return folder / "x.yaml", "cannot read: not a regular file (a character device)"


def _top_oversized(folder: Path) -> tuple[Path, str]:
    with open(folder / "x.yaml", "wb") as fh:
        fh.truncate(9 * 1024 * 1024)
    return folder / "x.yaml", f"cannot read: file too large ({9 * 1024 * 1024} bytes; the limit is 8388608)"


@pytest.mark.parametrize("make", [_top_fifo, _top_device_symlink, _top_oversized], ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("given", ["folder", "file"])
def test_irregular_top_level_file_is_one_clear_error(tmp_path: Path, make: object, given: str) -> None:
    folder = tmp_path / "lists"
    folder.mkdir()
    write(folder, "good.yaml", GOOD.replace("app: t", "app: g"))
    path, message = make(folder)  # type: ignore[operator]
    proc = _check(str(folder) if given == "folder" else str(path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"{path}:1:1: {message}"]


# -- YAML nesting ----------------------------------------------------------------------------------------------------

NESTED = {
    "flow-sequences": ("x: " + "[" * 500 + "]" * 500 + "\n", "1:35"),
    "flow-mappings": ("x: " + "{a: " * 500 + "}" * 500 + "\n", "1:125"),
    "block-sequences": ("- " * 500 + "y\n", "1:65"),
    "in-a-rule": (GOOD + "  - store:\n      google_play: " + "[" * 300 + "]" * 300 + "\n", "9:48"),
}


@pytest.mark.parametrize("name", list(NESTED))
def test_deep_nesting_is_a_located_error_not_a_traceback(tmp_path: Path, name: str) -> None:
    text, where = NESTED[name]
    folder = tmp_path / "lists"
    path = write(folder, "t.yaml", text)
    assert len(text) < 4000
    assert _errors(folder) == [f"{path}:{where}: YAML syntax error: nesting deeper than 32 levels"]
    proc = _check(str(folder))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr
    assert proc.stderr.splitlines() == [f"{path}:{where}: YAML syntax error: nesting deeper than 32 levels"]


def test_nesting_within_the_limit_still_parses(tmp_path: Path) -> None:
    # 20 levels of lists where the schema wants a scalar: an ordinary schema error, not a nesting error.
    folder = tmp_path / "lists"
    path = write(folder, "t.yaml", GOOD + "  - domain: " + "[" * 20 + "]" * 20 + "\n    category: web\n")
    assert _errors(folder) == [f"{path}:8:13: 'domain' must be a single value"]


# -- the live reloader ---------------------------------------------------------------------------------------------


def _reloads(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("enforcer_policy_reloads_total", {"result": result}) or 0.0


def _bump(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


async def _until(cond: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return bool(cond())  # type: ignore[operator]


def _unblock(fifo: Path) -> None:
    """If a reader is stuck in open() on ``fifo`` (the old code), let it finish: open and close the write end."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("bad", ["fifo-include", "fifo-yaml", "deep-nesting"])
async def test_running_reloader_survives_a_bad_input_and_applies_the_next_good_edit(
    tmp_path: Path, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "lists"
    path = write(folder, "t.yaml", GOOD)
    registry = CollectorRegistry()
    holder = PolicyHolder(folder, metrics=Metrics(registry))
    task = asyncio.create_task(holder.watch(interval=0.05, settle=0.02))
    fifo = folder / ("feed.txt" if bad == "fifo-include" else "x.yaml")
    try:
        with caplog.at_level(logging.ERROR, logger="enforcer.policy"):
            if bad == "fifo-include":
                os.mkfifo(fifo)
                path.write_text(_include("feed.txt"))
            elif bad == "fifo-yaml":
                os.mkfifo(fifo)
            else:
                path.write_text("x: " + "[" * 500 + "]" * 500 + "\n")
            _bump(path)
            assert await _until(lambda: _reloads(registry, "failure") == 1)
        assert holder.policy.match_name("one.example") is not None  # the last good policy stays
        assert holder.last_error is not None and holder.last_error.startswith(str(folder))
        if bad == "fifo-yaml":
            fifo.unlink()
        path.write_text(GOOD.replace("one.example", "two.example"))
        _bump(path)
        assert await _until(lambda: holder.policy.match_name("two.example") is not None)
        assert _reloads(registry, "success") == 2
    finally:
        _unblock(fifo)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
