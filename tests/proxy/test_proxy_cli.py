"""``enforcer proxy`` command line: the mitmdump argv it builds, and one-line errors (exit 1) for bad input."""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from enforcer.cli import main
from enforcer.proxy.cli import ADDON_PATH, add_arguments, mitmdump_command
from tests.conftest import BLOCKLISTS, ROOT


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments("proxy", parser)
    return parser.parse_args(argv)


def test_mitmdump_command_is_lazy_quiet_and_passes_extra_args(tmp_path: Path) -> None:
    args = parse(
        ["--listen", "[::1]:9090", "--blocklist", str(BLOCKLISTS), "--events", str(tmp_path / "e.jsonl"),
         "--metrics", "127.0.0.1:9191", "--confdir", str(tmp_path), "--", "--mode", "transparent", "-v"]
    )  # fmt: skip
    cmd = mitmdump_command(args)
    pairs = dict(itertools.pairwise(cmd))
    assert pairs["--listen-host"] == "::1" and pairs["--listen-port"] == "9090"
    assert pairs["-s"] == str(ADDON_PATH) and ADDON_PATH.name == "addon.py"
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert "connection_strategy=lazy" in sets and "flow_detail=0" in sets and f"confdir={tmp_path}" in sets
    assert f"enforcer_blocklist={BLOCKLISTS.resolve()}" in sets and "enforcer_metrics=127.0.0.1:9191" in sets
    assert f"enforcer_events={(tmp_path / 'e.jsonl').resolve()}" in sets
    assert cmd[-3:] == ["--mode", "transparent", "-v"]


def test_defaults() -> None:
    args = parse([])
    assert args.listen == "127.0.0.1:8080" and args.events is None and args.metrics is None
    assert args.confdir.endswith(".mitmproxy")


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enforcer", "proxy", *argv], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_broken_blocklist_exits_1_with_path_line_col(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("app: bad\npolicy:\n  effective: 2023-10-30\nblock:\n  - domain: 'a b'\n")
    out = run_cli("--blocklist", str(tmp_path), "--listen", "127.0.0.1:1")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines and all(line.startswith(f"{tmp_path / 'bad.yaml'}:5:") for line in lines), out.stderr


def test_bad_addresses_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    # In-process (the CLI's own main): these exits happen before mitmdump would start. The subprocess path of the
    # same command is covered by test_broken_blocklist_exits_1_with_path_line_col.
    for flag, value in (("--listen", "nonsense"), ("--metrics", "127.0.0.1:99999")):
        code = main(["proxy", flag, value])
        err = capsys.readouterr().err
        assert code == 1 and flag in err and len(err.strip().splitlines()) == 1, err
    code = main(["proxy", "--blocklist", "/nonexistent/blocklists"])
    assert code == 1 and "no such file or directory" in capsys.readouterr().err
