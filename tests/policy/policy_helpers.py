"""Helpers for the policy tests (imported as ``tests.policy.policy_helpers``): the shipped policy loaded once, small
blocklists written to a tmp folder, and the ``enforcer`` CLI run as a real subprocess (``enforcer``) or through the
same ``enforcer.cli.main`` in this process (``enforcer_in_process``: no interpreter start per call)."""

from __future__ import annotations

import contextlib
import functools
import io
import subprocess
import sys
import textwrap
from pathlib import Path

from enforcer.cli import main
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


def enforcer_in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """``enforcer ARGS`` through ``enforcer.cli.main`` here, captured like ``enforcer`` (argparse exits give their code;
    any other exception fails the calling test instead of printing a traceback)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())
