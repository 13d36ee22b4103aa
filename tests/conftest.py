"""Shared test fixtures: paths, free ports, ``require_tool`` (skip locally when a Debian tool is missing, fail in CI
where .ci/run installs it, so a missing install step cannot pass silently) and ``eventually`` (the one deadline-polling
helper: a test waits for a condition with it, never with a hand-rolled ``while time.monotonic() < deadline`` loop).

Helpers are imported as ``from tests.conftest import ...`` (the one import style for test helpers).

``pytest_configure`` compiles the ``enforcer`` package once per run when bytecode writing is off
(``PYTHONDONTWRITEBYTECODE``, as in containers): every resolver, proxy, analyst and CLI process the tests start would
otherwise compile the modules it imports from source, ~0.25 s of CPU per start."""

from __future__ import annotations

import compileall
import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKLISTS = ROOT / "blocklists"
DATA = Path(__file__).resolve().parent / "data"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

T = TypeVar("T")


def find_tool(name: str) -> str | None:
    candidates = (f"/usr/sbin/{name}", f"/sbin/{name}")
    return shutil.which(name) or next((p for p in candidates if os.access(p, os.X_OK)), None)


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed: scripts/system-deps.sh should have installed it")
        pytest.skip(f"{name} not installed (make system-deps)")
    return path


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on ``host`` (the resolver binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


@contextlib.contextmanager
def small_tmpfs(disk: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``disk`` (created) for the test, unmounted after it: a real disk that fills or
    is remounted read-only. Root only (as CI runs); skips the test otherwise."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounts a small tmpfs (root, as CI runs)")
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True, timeout=10)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False, timeout=10)


def eventually(
    check: Callable[[], T | None],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Call ``check`` until it returns a truthy value and return that value; fail the test after ``timeout`` seconds.

    ``message`` (or the text it returns, computed only on failure, e.g. to include a process's log) explains what
    did not happen. An exception raised by ``check`` propagates at once: only a falsy result is retried. The check
    runs once more after the deadline, so a slow machine that let time pass during the last sleep still sees it.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    value = check()
    if value:
        return value
    text = message() if callable(message) else message
    pytest.fail(f"after {timeout:g}s: {text}")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``enforcer ARGS`` in this process, from the repository root: the parser, config handling and commands of the
    console script without an interpreter start (~1 s each on the test machine). Output and exit code come back as
    from ``subprocess.run``; log records go to pytest's capture. Tests of the process itself (entry points, signals,
    hangs) use ``tests.policy.policy_helpers.enforcer``, which starts ``python -m enforcer``."""
    from enforcer.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help, --version, usage errors
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return subprocess.CompletedProcess(["enforcer", *args], code, out.getvalue(), err.getvalue())


def pytest_configure(config: pytest.Config) -> None:
    if sys.dont_write_bytecode:
        # Into the package's own __pycache__ (ignored by git, read by every child as usual); the children still
        # write nothing. A module edited during the run is compiled from source again, as without this.
        compileall.compile_dir(ROOT / "enforcer", quiet=1)


@pytest.fixture
def blocklists() -> Path:
    return BLOCKLISTS


@pytest.fixture
def loopback_netns() -> Iterator[None]:
    """The test runs in a fresh network namespace with only loopback (for tests that name real or banned addresses)."""
    from tests.netns import loopback_only_netns

    with loopback_only_netns():
        yield
