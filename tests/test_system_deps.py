"""scripts/system-deps.sh: every tool the tests or the `serve` summary name is checked for and installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import ROOT


def test_missing_tools_include_dig_and_its_package(tmp_path: Path) -> None:
    # A PATH with only a non-root `id`: every tool outside /usr/sbin counts as missing (dig lives in /usr/bin), and
    # the script prints what it would install instead of installing it.
    (tmp_path / "id").write_text("#!/bin/sh\necho 1000\n", encoding="utf-8")
    os.chmod(tmp_path / "id", 0o755)
    out = subprocess.run(
        ["/bin/bash", str(ROOT / "scripts" / "system-deps.sh")],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    line = out.stderr.strip()
    missing = line.split("missing ", 1)[1].split(";", 1)[0].split()
    packages = line.split("apt-get install ", 1)[1].split(")", 1)[0].split()
    assert "dig" in missing and "bind9-dnsutils" in packages
    assert "named-checkzone" in missing and "bind9-utils" in packages  # the others still listed
