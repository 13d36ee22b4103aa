"""Headless Chromium for the browser tests: Debian ``chromium`` + ``chromedriver`` driven through selenium, with one
set of flags kept in one place (the analyst dashboard test and the proxy's block page test use it).

- ``chromium(profile, *flags, env=None, window=(1400, 2200))``: a context manager yielding a started WebDriver with
  ``COMMON_FLAGS``, its own profile folder (``--user-data-dir``), the window size and the caller's ``flags`` (e.g.
  ``--proxy-server=...``, ``--host-resolver-rules=...``); ``env`` is chromedriver's (and so Chromium's) environment,
  e.g. ``HOME`` with an NSS store holding a test CA. The driver quits when the block ends, whatever happened in it.
  Skips (fails in CI) when either tool is missing (``conftest.require_tool``).
- ``LOOPBACK_ONLY``: the flag that makes every name fail to resolve except the 127.0.0.1 literal (a page that tried
  to reach the internet would fail, not leak).
- ``artefacts(tmp_path)``: where screenshots are kept: ``$ENFORCER_ARTEFACTS``, else ``tmp_path / "artefacts"``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.conftest import require_tool

PAGE_LOAD_TIMEOUT = 30  # seconds: a page that does not load fails the test instead of hanging it
COMMON_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # No traffic of its own (updates, sync, field trials): what reaches a test server is what the page asked for.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
LOOPBACK_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"


@contextlib.contextmanager
def chromium(
    profile: Path, *flags: str, env: Mapping[str, str] | None = None, window: tuple[int, int] = (1400, 2200)
) -> Iterator[Any]:
    chromium_bin = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium_bin
    for flag in (*COMMON_FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}", *flags):
        opts.add_argument(flag)
    service = Service(chromedriver, env=dict(env) if env is not None else None)
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
        yield driver
    finally:
        driver.quit()


def artefacts(tmp_path: Path) -> Path:
    """Where screenshots are kept: ``$ENFORCER_ARTEFACTS`` (CI uploads it), else a folder in the test's tmp dir."""
    out = Path(os.environ.get("ENFORCER_ARTEFACTS") or tmp_path / "artefacts")
    out.mkdir(parents=True, exist_ok=True)
    return out
