"""One `enforcer check` run lists every problem of a file, also when 'app' or 'policy' itself is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_problems_after_a_bad_app_and_policy_are_still_reported(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text(
        "app: Bad_App\n"
        "policy:\n"
        "  effective: 2023-13-45\n"
        "block:\n"
        "  - domain: a..b\n"
        "    category: web\n"
        "  - host: ok.example\n"
        "    category: nope\n"
    )
    out = subprocess.run([sys.executable, "-m", "enforcer", "check", str(bad)], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [f"{bad}:1:6", f"{bad}:3:14", f"{bad}:5:13", f"{bad}:8:15"]


def test_missing_app_and_policy_with_a_bad_rule(tmp_path: Path) -> None:
    bad = tmp_path / "y.yaml"
    bad.write_text("block:\n  - domain: good.example\n  - cidr: 10.0.0.1/8\n    category: web\n")
    out = subprocess.run([sys.executable, "-m", "enforcer", "check", str(bad)], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 1
    text = out.stderr
    assert "missing required key 'app'" in text and "missing required key 'policy'" in text
    assert f"{bad}:2:5: block rule needs a 'category'" in text
    assert f"{bad}:3:11: invalid CIDR" in text
