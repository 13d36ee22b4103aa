"""``enforcer proxy`` command line: the mitmdump argv it builds, and one-line errors (exit 1) for bad input."""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from enforcer.cli import main
from enforcer.proxy.cli import ADDON_PATH, CA_CERT_NAME, add_arguments, default_confdir, mitmdump_command
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
    assert args.confdir == str(Path("var") / "mitmproxy") and args.addon_path is False


@pytest.mark.parametrize("data_dir", [None, "elsewhere"])
def test_proxy_and_serve_share_one_confdir_default(tmp_path: Path, data_dir: str | None) -> None:
    """One CA per host: ``serve``'s proxy child and a bare ``enforcer proxy`` default to the same directory."""
    from enforcer.cli import build_parser
    from enforcer.serve import plan

    parser, _ = build_parser()
    args = parser.parse_args(["serve", *(["--data-dir", data_dir] if data_dir else [])])
    children, info = plan(args)
    proxy_argv = next(c for c in children if c.name == "proxy").argv
    served = proxy_argv[proxy_argv.index("--confdir") + 1]
    if data_dir is None:
        assert served == parse([]).confdir == default_confdir()
    else:
        assert served == default_confdir(data_dir) == str(Path(data_dir) / "mitmproxy")
    assert info["ca"] == str(Path(served) / CA_CERT_NAME)


# Each case starts mitmdump (~4 s): the default and a relative --confdir in the default run, an absolute one under
# -m slow.
@pytest.mark.parametrize("confdir", [None, "custom-ca", pytest.param("absolute", marks=pytest.mark.slow)])
def test_proxy_prints_the_ca_path_at_start(tmp_path: Path, confdir: str | None) -> None:
    # mitmdump rejects the unknown flag and exits at once: the line must come before mitmdump starts.
    if confdir == "absolute":
        confdir = str(tmp_path / "abs-ca")
    flags = ["--confdir", confdir] if confdir else []
    out = subprocess.run(
        [sys.executable, "-m", "enforcer", "proxy", "--blocklist", str(BLOCKLISTS), "--listen", "127.0.0.1:1", *flags,
         "--", "--no-such-mitmdump-flag"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode != 0
    expected = Path(confdir).expanduser() if confdir else Path("var") / "mitmproxy"
    if not expected.is_absolute():
        expected = tmp_path / expected
    assert f"mitmproxy CA: {expected / CA_CERT_NAME}\n" in out.stderr, out.stderr


def test_addon_path_prints_a_file_mitmdump_loads(tmp_path: Path) -> None:
    """``enforcer proxy --addon-path`` (no venv activation needed) names the addon; ``mitmdump -s`` it serves."""
    from tests.conftest import free_port
    from tests.proxy.test_e2e import stop_proxy, wait_port

    out = subprocess.run(
        [str(Path(sys.executable).with_name("enforcer")), "proxy", "--addon-path"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0 and out.stderr == "", out.stderr
    path = Path(out.stdout.strip())
    assert out.stdout == f"{path}\n" and path.is_absolute() and path.is_file() and path == ADDON_PATH
    port, metrics_port = free_port(), free_port()
    log = tmp_path / "mitmdump.log"
    cmd = [str(Path(sys.executable).with_name("mitmdump")), "--listen-host", "127.0.0.1", "--listen-port", str(port)]
    cmd += ["--set", f"confdir={tmp_path / 'confdir'}", "--set", "connection_strategy=lazy", "-s", str(path)]
    cmd += ["--set", f"enforcer_blocklist={BLOCKLISTS}", "--set", f"enforcer_metrics=127.0.0.1:{metrics_port}"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(metrics_port, proc, log)  # only the loaded addon serves this port
        import httpx

        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert "enforcer_policy_rules" in metrics, metrics[-2000:]
    finally:
        stop_proxy(proc)


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


def test_a_taken_port_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    """mitmdump's own message spans lines and ends 'Try specifying a different port by using --mode regular@N', a
    flag this command does not have."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_cli("--listen", f"127.0.0.1:{port}", "--confdir", str(tmp_path / "c"))
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"enforcer proxy: cannot listen on 127.0.0.1:{port}: Address already in use (choose another --listen)"
    )
    assert "--mode" not in out.stderr
