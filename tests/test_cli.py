"""The ``enforcer`` command line as a real process: entry points, exit codes, lookup output, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from enforcer import __version__
from enforcer.cli import COMMANDS, available_commands, build_parser
from tests.conftest import ROOT, run_cli
from tests.policy.policy_helpers import enforcer


def test_console_script_and_module_agree() -> None:
    script = ROOT / ".venv" / "bin" / "enforcer"
    if not script.exists():
        pytest.skip("no console script in .venv")
    a = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30, check=False)
    b = enforcer("--version")
    assert a.returncode == b.returncode == 0
    assert a.stdout.strip() == b.stdout.strip() == f"enforcer {__version__}"


def test_no_command_is_a_usage_error() -> None:
    proc = enforcer()
    assert proc.returncode == 2 and "COMMAND" in proc.stdout
    proc = enforcer("no-such-command")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_commands_table() -> None:
    _parser, subs = build_parser()
    assert set(subs) == set(available_commands())
    for name in ("check", "lookup", "export"):
        assert name in subs and COMMANDS[name][0] == "enforcer.policy.cli"
    for name, (module, help_text) in COMMANDS.items():
        assert module.startswith("enforcer.") and help_text, name


def test_a_command_loads_only_its_own_flags() -> None:
    """``enforcer check`` builds its own flags only: the resolver's, proxy's and feeds' command modules (asyncio,
    prometheus, aiohttp: about half a second of every start) stay unloaded; help reads as with every command's flags."""
    heavy = ("aiohttp", "asyncio", "prometheus_client", "mitmproxy", "enforcer.dns.cli", "enforcer.feeds.cli")
    code = (
        "import contextlib, io, sys\nfrom enforcer.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    code = main(['check', 'blocklists'])\n"
        f"print(code, *sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["0"], done.stdout + done.stderr
    parser, subs = build_parser()
    assert run_cli("--help").stdout == parser.format_help()
    for name in ("dns", "feeds", "check"):
        assert run_cli(name, "--help").stdout == subs[name].format_help(), name


def test_lookup_kinds_and_invalid_queries() -> None:
    proc = enforcer("lookup", "--at", "2024-01-01", "WEIXIN.QQ.COM.", "https://dldir1.qq.com/weixin/x.apk",
                    "93.159.228.1", "qq.com", "bad..name", "http://[::1")  # fmt: skip
    assert proc.returncode == 1  # some queries were invalid; the valid ones are still answered
    out = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [(o["kind"], o["verdict"]) for o in out] == [
        ("domain", "block"),
        ("url", "block"),
        ("ip", "block"),
        ("domain", "none"),
    ]
    assert out[0]["query"] == "WEIXIN.QQ.COM." and out[2]["app"] == "kaspersky"
    assert out[3] == {"query": "qq.com", "kind": "domain", "verdict": "none", "app": None, "category": None,
                      "rule": None, "source": None, "enforced": False}  # fmt: skip
    err = proc.stderr.splitlines()
    assert len(err) == 2 and err[0].startswith("bad..name: invalid domain: ") and err[1].startswith("http://[::1:")
    assert "Traceback" not in proc.stderr


def test_lookup_reads_every_ip_spelling_and_refuses_address_lookalikes() -> None:
    """An address is the address it denotes (decimal, hex, octal, short forms, IPv4 in IPv6), and a query that only
    looks like an address is an error, not a domain that matches nothing."""
    spellings = ["77.74.177.5", "1296740613", "0x4d4ab105", "0115.0112.0261.05", "77.74.45317", "77.4894981",
                 "[::ffff:77.74.177.5]", "64:ff9b::4d4a:b105"]  # fmt: skip
    lookalikes = ["300.1.1.1", "1.2.3.4.5", "0x1ffffffff", "1:2:3"]
    proc = enforcer("lookup", "--at", "2024-01-01", *spellings, *lookalikes)
    assert proc.returncode == 1
    out = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [(o["query"], o["kind"], o["verdict"], o["app"]) for o in out] == [
        (q, "ip", "block", "kaspersky") for q in spellings
    ]
    err = proc.stderr.splitlines()
    assert [e.split(":", 1)[0] if not e.startswith("1:2:3") else "1:2:3" for e in err] == lookalikes
    assert all("invalid ip" in e for e in err) and "Traceback" not in proc.stderr


def test_lookup_method_and_bad_at() -> None:
    url = "http://198.51.100.1/mmtls/0123abcd"
    post = json.loads(enforcer("lookup", "--method", "POST", url).stdout)
    get = json.loads(enforcer("lookup", url).stdout)
    assert post["verdict"] == "block" and post["rule"] == "wechat:url:mmtls-shortlink"
    assert get["verdict"] == "none"
    proc = enforcer("lookup", "--at", "yesterday", "qq.com")
    assert proc.returncode == 1 and proc.stderr.strip() == "--at: not an ISO date or timestamp: 'yesterday'"


def test_broken_blocklist_through_lookup_and_export(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("app: t\npolicy:\n  effective: 2023-02-30\n")
    for args in (["lookup", "--blocklist", str(bad), "x.example"], ["export", "--format", "rpz", "--blocklist",
                                                                    str(bad)]):  # fmt: skip
        proc = enforcer(*args)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.splitlines() == [
            f"{bad}:3:14: 'effective' must be a date (2023-10-30) or an RFC 3339 timestamp, got '2023-02-30'"
        ]


def test_lookup_says_when_url_rules_exist_for_a_host(tmp_path: Path) -> None:
    bl = tmp_path / "t.yaml"
    bl.write_text(
        "app: t\npolicy:\n  effective: 2023-10-30\nblock:\n"
        '  - url: "dl.example/app/*"\n    category: download\n'
        '  - url: "*.cdn.example/pkg/*"\n    category: update\n'
    )
    queries = ["dl.example", "DL.Example.", "a.cdn.example", "other.example", "cdn-x.example"]
    proc = enforcer("lookup", "--blocklist", str(bl), *queries)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(x) for x in proc.stdout.splitlines()]
    base = {"verdict": "none", "app": None, "category": None, "rule": None, "source": None, "enforced": False}
    for o, q in zip(out, queries, strict=True):
        # Every old key keeps its value: only new keys are added.
        assert {k: o[k] for k in base} == base and o["query"] == q and o["kind"] == "domain"
    assert [o.get("url_rules", False) for o in out] == [True, True, True, False, False]
    assert all("proxy judges" in o["note"] for o in out[:3]) and all("note" not in o for o in out[3:])
    # The shipped list: the case from the issue.
    shipped = json.loads(enforcer("lookup", "dldir1.qq.com").stdout)
    assert shipped["verdict"] == "none" and shipped["url_rules"] is True


def test_one_set_of_defaults_and_readable_help(tmp_path: Path) -> None:
    _parser, subs = build_parser()
    dns, export = subs["dns"].parse_args([]), subs["export"].parse_args([])
    assert export.mode == dns.mode == "null"  # one constant: an exported zone answers like the resolver
    head = enforcer("export", "--format", "hosts").stdout.splitlines()[0]
    assert head.endswith("mode null"), head
    for name, sub in subs.items():
        text = sub.format_help()
        # A list default printed raw ("default ['blocklists']") is gone everywhere; the policy commands say "default:".
        assert "['" not in text, name
        if name in ("check", "lookup", "export"):
            assert "(default " not in text and "; default " not in text.replace("\n", " "), name
        for action in sub._actions:
            flags = [o for o in action.option_strings if o.startswith("--")]
            if any(f.endswith(("listen", "metrics")) for f in flags):
                assert action.metavar == "HOST:PORT", (name, flags)
    for name in ("check", "lookup", "export"):
        blocklist = [a for a in subs[name]._actions if "--blocklist" in a.option_strings]
        assert len(blocklist) == 1 and blocklist[0].metavar == "PATH", name
    # check reads --blocklist like lookup and export, and still its positional PATHs.
    bad = tmp_path / "bad.yaml"
    bad.write_text('app: t\npolicy:\n  effective: 2023-10-30\nblock:\n  - domain: "x\n')
    for args in (["check", "--blocklist", str(bad)], ["check", str(bad)], ["lookup", "--blocklist", str(bad), "a.b"]):
        proc = enforcer(*args)
        assert proc.returncode == 1 and proc.stderr == f"{bad}:5:13: YAML syntax error: unterminated quoted string\n"
    good = enforcer("check", "--blocklist", str(ROOT / "blocklists"))
    assert good.returncode == 0 and good.stdout.startswith("OK: "), good.stderr


def test_a_wrong_flag_is_named_by_its_command_usage() -> None:
    proc = enforcer("dns", "--bogus")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(
        "usage: enforcer dns "
    ) and "enforcer dns: error: unrecognized arguments: --bogus" in (proc.stderr), proc.stderr


def test_a_path_that_cannot_be_used_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A file where a folder should be (as a read-only or unreadable folder would, which root cannot show): the
    resolver refused nothing at start and lost the first hit's event; serve crashed in mkdir."""
    blocker = tmp_path / "afile"
    blocker.write_text("", encoding="utf-8")
    proc = enforcer("dns", "--listen", "127.0.0.1:0", "--events", str(blocker / "dns.jsonl"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == (
        f"enforcer dns: --events {blocker}: cannot write: a file stands where a folder of the path should be"
    )
    proc = enforcer("serve", "--data-dir", str(blocker / "var"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"enforcer serve: {blocker / 'var' / 'events'}: Not a directory"
