"""``--config`` through the command line, run in process: flags beat config, config beats defaults; unknown keys
and bad values are FILE:LINE:COL errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from enforcer.cli import COMMANDS
from enforcer.config import ConfigError, ReplaceAppend, load_config, parse_size, section_defaults
from tests.conftest import BLOCKLISTS, run_cli
from tests.policy.export_fixture import build


def test_flags_beat_config_beat_defaults(tmp_path: Path) -> None:
    policy_dir = tmp_path / "p"
    build(policy_dir)
    conf = tmp_path / "c.yaml"
    conf.write_text(f"export:\n  format: domains\n  blocklist: {policy_dir}\n  zone: rpz.from-config.\n")
    # Config beats defaults: the format and blocklist come from the file.
    proc = run_cli("export", "--config", str(conf))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# enforcer export, format domains") and "blocked.example\n" in proc.stdout
    # Flags beat config.
    proc = run_cli("export", "--config", str(conf), "--format", "rpz")
    assert proc.returncode == 0, proc.stderr
    assert "$ORIGIN rpz.from-config." in proc.stdout
    proc = run_cli("export", "--config", str(conf), "--format", "rpz", "--zone", "rpz.flag.", "--blocklist",
                    str(BLOCKLISTS))  # fmt: skip
    assert "$ORIGIN rpz.flag." in proc.stdout and "weixin.qq.com A 0.0.0.0\n" in proc.stdout
    # Defaults: without config the default blocklist (the shipped lists) and zone apply.
    proc = run_cli("export", "--format", "rpz")
    assert "$ORIGIN rpz.enforcer." in proc.stdout and "weixin.qq.com A 0.0.0.0\n" in proc.stdout


def test_lookup_at_from_config(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("lookup:\n  at: 2023-01-01\n")
    before = json.loads(run_cli("lookup", "--config", str(conf), "weixin.qq.com").stdout)
    after = json.loads(run_cli("lookup", "--config", str(conf), "--at", "2024-01-01", "weixin.qq.com").stdout)
    assert before["verdict"] == after["verdict"] == "block"
    assert before["enforced"] is False and after["enforced"] is True


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("export:\n  format: rpz\n  formt: rpz\n", "c.yaml:3:3: unknown key 'export.formt' (known: blocklist, format, "
         "log-level, mode, output, zone)"),
        ("export:\n  format: bind\n", "c.yaml:2:3: invalid value 'bind' for 'export.format' (choose from rpz, hosts, "
         "domains, dnsmasq, unbound, adblock, squid, nftables)"),
        ("export: [1, 2]\n", "c.yaml:1:1: section 'export' must be a mapping of option: value"),
        ("export:\n  format: rpz\n zone: x\n", "c.yaml:3:2: YAML syntax error: expected <block end>, but found "
         "'<block mapping start>'"),
        ("- just\n- a list\n", "c.yaml:1:1: the config must be a mapping of sections (dns:, proxy:, analyst:, ...)"),
        # Every command is a config section: the list follows enforcer/cli.py (discover, feeds, profile joined it).
        ("export:\n  format: rpz\ndnss:\n  listen: x\n",
         f"c.yaml:3:1: unknown section 'dnss' (known: {', '.join(sorted(COMMANDS))})"),
    ],
)  # fmt: skip
def test_config_errors_are_one_line_with_position(tmp_path: Path, text: str, error: str) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text(text)
    proc = run_cli("export", "--config", str(conf), "--format", "rpz")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [f"{tmp_path}/{error}"]


def test_missing_config_file(tmp_path: Path) -> None:
    proc = run_cli("check", "--config", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"{tmp_path}/nope.yaml:1:1: cannot read config: No such file or directory"


def test_other_sections_are_ignored_by_this_command(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text("dns:\n  listen: 127.0.0.1:5353\ncheck:\n  strict: true\n")
    proc = run_cli("check", "--config", str(conf))
    assert proc.returncode == 0, proc.stderr


def test_replace_append_and_section_defaults(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", action=ReplaceAppend, default=[])
    parser.add_argument("--listen", default="127.0.0.1:53")
    conf = tmp_path / "c.yaml"
    conf.write_text("dns:\n  upstream: [1.1.1.1, 8.8.8.8]\n  listen: 127.0.0.2:53\n")
    data, node = load_config(str(conf))
    parser.set_defaults(**section_defaults(parser, data, node, "dns", str(conf)))
    assert parser.parse_args([]).upstream == ["1.1.1.1", "8.8.8.8"]
    assert parser.parse_args(["--upstream", "9.9.9.9"]).upstream == ["9.9.9.9"]  # replaced, not appended
    assert parser.parse_args(["--upstream", "9.9.9.9", "--upstream", "1.0.0.1"]).upstream == ["9.9.9.9", "1.0.0.1"]
    assert parser.parse_args([]).listen == "127.0.0.2:53"
    conf.write_text("dns:\n  upstream: 1.1.1.1\n")
    data, node = load_config(str(conf))
    assert section_defaults(parser, data, node, "dns", str(conf)) == {"upstream": ["1.1.1.1"]}
    conf.write_text("dns:\n  listen: x\n  bogus: 1\n  other: 2\n")
    data, node = load_config(str(conf))
    with pytest.raises(ConfigError) as info:
        section_defaults(parser, data, node, "dns", str(conf))
    assert [x.split(" (known")[0] for x in str(info.value).splitlines()] == [
        f"{conf}:3:3: unknown key 'dns.bogus'",
        f"{conf}:4:3: unknown key 'dns.other'",
    ]


def test_string_for_a_switch_is_an_error_not_true(tmp_path: Path) -> None:
    conf = tmp_path / "c.yaml"
    conf.write_text('check:\n  strict: "no"\n')
    proc = run_cli("check", "--config", str(conf))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"{conf}:2:3: 'check.strict' must be true or false, got 'no'"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("65536", 65536),
        ("64K", 64 * 1024),
        ("64kib", 64 * 1024),
        ("512M", 512 * 1024**2),
        ("4G", 4 * 1024**3),
        ("1TiB", 1024**4),
        (" 8MB ", 8 * 1024**2),
    ],
)
def test_parse_size_reads_every_unit(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-1", "1.5G", "64X", "K", "1" * 20, "4 G"])
def test_parse_size_refuses_with_one_line(text: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid size .* \(e\.g\. 65536, 64M, 4G\)$"):
        parse_size(text)


def test_parse_size_minimum_zero_accepts_zero() -> None:
    assert parse_size("0", minimum=0) == 0


def test_a_bad_value_in_the_config_names_its_line_not_a_flag(tmp_path: Path) -> None:
    """``dns: timeout: three`` said ``--timeout 'three': not a number``: a flag the user never typed."""
    cfg = tmp_path / "enforcer.yaml"
    cfg.write_text("dns:\n  listen: 127.0.0.1:0\n  timeout: three\n", encoding="utf-8")
    out = run_cli("dns", "--config", str(cfg))
    assert out.returncode == 1 and out.stderr.strip() == f"{cfg}:3:3: 'dns.timeout': 'three': not a number"
    out = run_cli("dns", "--config", str(cfg), "--timeout", "four")  # the command line's value: named as a flag
    assert out.returncode == 1 and out.stderr.strip() == "enforcer dns: --timeout 'four': not a number"
