"""Helpers for the policy tests (imported as ``tests.policy.policy_helpers``): the shipped policy loaded once, small
blocklists written to a tmp folder, and the ``enforcer`` CLI run as a real subprocess (``enforcer``; the in-process
run is ``tests.conftest.run_cli``)."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from pathlib import Path

from enforcer.policy import Policy, load_policy
from tests.conftest import BLOCKLISTS, ROOT

HEADER = """\
app: {app}
policy:
  effective: 2023-10-30
  timezone: America/Toronto
"""


@functools.cache
def shipped() -> Policy:
    return load_policy(BLOCKLISTS)


def write(folder: Path, name: str, text: str) -> Path:
    """Write ``text`` (dedented) to ``folder/name`` and return the path."""
    p = folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def app_yaml(app: str, body: str) -> str:
    """A minimal valid blocklist for ``app`` with ``body`` (top-level YAML: block:/allow: sections) appended."""
    return HEADER.format(app=app) + textwrap.dedent(body)


def enforcer(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m enforcer ARGS`` as a real process (the installed console script does the same)."""
    return subprocess.run(
        [sys.executable, "-m", "enforcer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
